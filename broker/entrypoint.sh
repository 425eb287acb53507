#!/bin/sh
# Builds Mosquitto's password file from the environment, then runs the given command
# (in compose: the image's own entrypoint and mosquitto).
#
#   MQTT_AGENT_PASSWORD    password of the user "agent"   (required)
#   MQTT_SENSOR_PASSWORD   password of the user "sensor"  (required)
#   MQTT_VIEWER_PASSWORD   password of the user "viewer"  (optional: read-only access to edge/#)
#   MOSQUITTO_PASSWD_FILE  where to write it (default /mosquitto/auth/passwd, as in mosquitto.conf)
#
# The passwords never appear on a command line (printf is a shell builtin) and only
# their salted hashes reach the file: mosquitto_passwd -U hashes it in place.
set -eu

passwd_file="${MOSQUITTO_PASSWD_FILE:-/mosquitto/auth/passwd}"
newline='
'

check() {
    # $1: variable name, $2: its value
    if [ -z "$2" ]; then
        echo "entrypoint: $1 is not set (see docs/operations.md, Security: the broker has no anonymous access)" >&2
        exit 2
    fi
    case "$2" in
        *"$newline"*) echo "entrypoint: $1 must be a single line" >&2; exit 2 ;;
    esac
}

check MQTT_AGENT_PASSWORD "${MQTT_AGENT_PASSWORD:-}"
check MQTT_SENSOR_PASSWORD "${MQTT_SENSOR_PASSWORD:-}"

umask 077
mkdir -p "$(dirname "$passwd_file")"
{
    printf 'agent:%s\n' "$MQTT_AGENT_PASSWORD"
    printf 'sensor:%s\n' "$MQTT_SENSOR_PASSWORD"
    if [ -n "${MQTT_VIEWER_PASSWORD:-}" ]; then
        check MQTT_VIEWER_PASSWORD "$MQTT_VIEWER_PASSWORD"
        printf 'viewer:%s\n' "$MQTT_VIEWER_PASSWORD"
    fi
} > "$passwd_file"
mosquitto_passwd -U "$passwd_file"
# Mosquitto drops root for its own user, which must still read the file.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown mosquitto "$(dirname "$passwd_file")" "$passwd_file"
fi

exec "$@"
