#!/bin/sh
cat /srv/greeting.txt
echo "running as $(id -un) in $(pwd)"
