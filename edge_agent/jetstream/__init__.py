"""Scale-out on NATS JetStream: the MQTT bridge, the partitioned consumer group of agents, models kept in JetStream."""
