"""The MQTT adapter: payloads to readings, verdicts to topics, the session, Home Assistant discovery."""
