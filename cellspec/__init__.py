"""What the controller and the hardware layer both need, and nothing else: the signal names
(sensors, inputs, outputs, commands) and the readers of configuration sections.

Why a package of its own: `controller` (the safety core, config, runtime, commands) depends on
`hal` (backends), and both depend on these names and readers. With them here the layering reads
top-down: controller -> hal -> cellspec, and cellspec imports neither (tests/test_layering.py).
The names module is in the MicroPython-compatible subset: the core imports it on a board.
"""
