"""The local stack: a faithful OHIP gateway and a local AWS endpoint (moto server).

Nothing here ships in the Lambda layer or the container; it exists so that the relay can be run
and tested with no access to OHIP or AWS.
"""
