#!/bin/bash
# Runs once, after the influxdb:2.7 image's own setup (DOCKER_INFLUXDB_INIT_MODE=setup) created the org,
# the bucket and the admin token; the image runs /docker-entrypoint-initdb.d/*.sh with the influx CLI
# already configured for that token.
#
# The gateway and Grafana speak InfluxDB's v1 API (/write, /query, InfluxQL), so the bucket gets:
# - a DBRP mapping: v1 database "aua", retention policy "autogen" -> the bucket;
# - two v1 authorizations (username/password): the gateway writes and reads, Grafana only reads.
set -euo pipefail

org="${DOCKER_INFLUXDB_INIT_ORG}"
bucket="${DOCKER_INFLUXDB_INIT_BUCKET}"
database="${AUA_INFLUX_DB:-aua}"

bucket_id="$(influx bucket list --org "$org" --name "$bucket" --hide-headers | cut -f 1)"
if [ -z "$bucket_id" ]; then
    echo "init.sh: bucket $bucket not found in org $org" >&2
    exit 1
fi

influx v1 dbrp create --org "$org" --db "$database" --rp autogen --bucket-id "$bucket_id" --default

influx v1 auth create --org "$org" \
    --username "${AUA_INFLUX_GATEWAY_USER:-aua-gateway}" \
    --password "${AUA_INFLUX_GATEWAY_PASSWORD:?set AUA_INFLUX_GATEWAY_PASSWORD}" \
    --read-bucket "$bucket_id" --write-bucket "$bucket_id" \
    --description "Aua gateway (v1 API)"

influx v1 auth create --org "$org" \
    --username "${AUA_INFLUX_READ_USER:-grafana}" \
    --password "${AUA_INFLUX_READ_PASSWORD:?set AUA_INFLUX_READ_PASSWORD}" \
    --read-bucket "$bucket_id" \
    --description "Grafana (InfluxQL, read only)"

echo "init.sh: v1 database $database -> bucket $bucket ($bucket_id); v1 users for the gateway and Grafana created"
