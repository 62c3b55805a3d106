"""The plant link: MQTT beside the scan loop, never in its way."""
