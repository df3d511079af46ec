#!/bin/sh
echo "moving data"
