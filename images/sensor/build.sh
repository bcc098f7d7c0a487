#!/bin/sh
# Builds the sensor sample (simulated readings appended to its volume) into an OCI image layout
# for amd64 and arm64, reproducibly (see images/build-static.sh).
#   images/sensor/build.sh OUT              # berth from $BERTH, else from PATH
exec sh "$(dirname "$0")/../build-static.sh" sensor "$@"
