"""What every layer agrees on, with no I/O: paths (`paths`), the heartbeat value (`pulse`),
the pulse-list encoding (`pulsecodec`), HTTP header names and the error/status table
(`http`), and the `Backend` contract between the node's front ends and its stores (`backend`).
"""
