#!/usr/bin/python3
"""Asks an NTP server the time with python3-ntplib, a client written apart
from ntpdig and chronyd, and prints what it measured as JSON."""
import json
import sys

import ntplib

reply = ntplib.NTPClient().request(sys.argv[1], version=4, port=int(sys.argv[2]), timeout=2)
json.dump({"offset": reply.offset, "delay": reply.delay, "stratum": reply.stratum,
           "leap": reply.leap, "version": reply.version, "mode": reply.mode}, sys.stdout)
