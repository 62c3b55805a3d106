"""`crushcell hmi`: the local web HMI, a separate process and a plain MQTT client of the public
topics (docs/hmi.md). Nothing here is imported by `crushcell run`."""
