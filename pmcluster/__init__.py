"""pmcluster: a horizontally scaled, highly available heartbeat store after Storm's Pacemaker."""

__version__ = "0.1.0"
API_VERSION = 1
