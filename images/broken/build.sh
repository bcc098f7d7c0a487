#!/bin/sh
# Builds the broken sample (exits at start, for rollback demos) into an OCI image layout
# for amd64 and arm64, reproducibly (see images/build-static.sh).
#   images/broken/build.sh OUT              # berth from $BERTH, else from PATH
exec sh "$(dirname "$0")/../build-static.sh" broken "$@"
