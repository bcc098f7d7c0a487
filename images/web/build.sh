#!/bin/sh
# Builds the web sample (an HTTP service with /health) into an OCI image layout
# for amd64 and arm64, reproducibly (see images/build-static.sh).
#   images/web/build.sh OUT              # berth from $BERTH, else from PATH
exec sh "$(dirname "$0")/../build-static.sh" web "$@"
