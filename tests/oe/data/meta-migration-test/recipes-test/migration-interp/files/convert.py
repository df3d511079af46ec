#!/usr/bin/env python3
"""Convert the data format."""

print("converted")
