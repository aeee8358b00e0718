#!/usr/bin/env bash
# kafka-run-class.sh CLASS [ARGS]: a class of the Kafka jars on Java, as the distribution's script
# does (tools log at WARN to stderr; the broker sets its own configuration, see kafka-server-start.sh).
exec java ${KAFKA_HEAP_OPTS:--Xmx256m} ${KAFKA_OPTS-} -Djava.awt.headless=true \
  "-Dlog4j2.configurationFile=${KAFKA_LOG4J_CONFIG:-/opt/kafka/config/tools-log4j2.properties}" \
  -cp '/opt/kafka/libs/*' "$@"
