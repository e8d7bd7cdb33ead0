#!/bin/sh
cat "$APP_HOME/message.txt"
echo "($(cat "$APP_HOME/lines.txt") lines)"
