"""The Sparkplug B 3.0 face of the plant link: the cell as an edge node (docs/sparkplug.md).

Off unless `[sparkplug] enabled = true`. It runs beside the JSON link on a paho client of its
own (one MQTT client has one will: ours is the NDEATH) and, like the JSON link, never touches
the scan loop except through snapshots and the command queue.
"""
