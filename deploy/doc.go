// Package deploy is the home of the Dockerfile, the Kubernetes manifests
// (kustomize), the Prometheus alert rules and the Grafana dashboard. Its tests render and
// decode them strictly, check them against the binary's defaults and build the image's binary
// the way the Dockerfile does, so that they cannot drift from the code unnoticed.
package deploy
