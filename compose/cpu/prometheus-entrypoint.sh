#!/bin/sh
# Starts Prometheus on the CPU stack (host network) with compose/prometheus/prometheus.cpu.yml, whose
# targets name the default ports; Prometheus configs cannot read the environment, so the ports chosen
# in the environment are written into a copy first.
set -eu
: "${TRITON_METRICS_PORT:=8002}" "${TRITON_HEALTH_PORT:=8003}" "${PROMETHEUS_PORT:=9090}" "${ALERTMANAGER_PORT:=9093}"
: "${MONITOR_PORT:=8010}"
sed -e "s/127\.0\.0\.1:8002/127.0.0.1:${TRITON_METRICS_PORT}/" \
    -e "s/127\.0\.0\.1:8003/127.0.0.1:${TRITON_HEALTH_PORT}/" \
    -e "s/127\.0\.0\.1:9090/127.0.0.1:${PROMETHEUS_PORT}/" \
    -e "s/127\.0\.0\.1:9093/127.0.0.1:${ALERTMANAGER_PORT}/" \
    -e "s/127\.0\.0\.1:8010/127.0.0.1:${MONITOR_PORT}/" \
    /etc/prometheus/prometheus.cpu.yml > /tmp/prometheus.yml
cp /etc/prometheus/alerts.yml /etc/prometheus/recording.yml /tmp/
exec prometheus --config.file=/tmp/prometheus.yml "$@"
