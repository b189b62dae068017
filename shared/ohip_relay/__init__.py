"""ohip-relay: Oracle Hospitality (OHIP) business events into AWS, reliably and in near real time."""

__version__ = "0.1.0"
