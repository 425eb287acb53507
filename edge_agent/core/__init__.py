"""The scoring core: readings in, verdicts and learn requests out. No I/O, no threads, no MQTT."""
