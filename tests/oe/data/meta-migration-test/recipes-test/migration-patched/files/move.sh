#!/bin/sh
echo moving
