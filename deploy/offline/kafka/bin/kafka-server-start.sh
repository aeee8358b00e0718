#!/usr/bin/env bash
# kafka-server-start.sh server.properties: the broker (heap from KAFKA_HEAP_OPTS, default 1 GiB).
export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}"
export KAFKA_OPTS="-XX:+UseG1GC -XX:MaxGCPauseMillis=20 ${KAFKA_OPTS-}"
KAFKA_LOG4J_CONFIG=/opt/kafka/config/log4j2.properties exec /opt/kafka/bin/kafka-run-class.sh kafka.Kafka "$@"
