package veilleuse.examples;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.stream.Stream;
import org.apache.avro.AvroRuntimeException;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.SchemaStore;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Reads alerts.v1 and prints each alert as one JSON line, decoded by Apache Avro's own
 * single-object decoder: the record names its writer schema by fingerprint, the store holds every
 * released schema, and Avro resolves the writer's schema to this consumer's reader schema.
 *
 * <p>It joins no consumer group and commits nothing (a team's real consumer would use a group of
 * its own). It reads read_committed: the detection workers write alerts in transactions.
 */
public final class AlertsConsumer {
  private static final String USAGE =
      "usage: AlertsConsumer --bootstrap HOST:PORT --topic alerts.v1 --schemas DIR --reader FILE"
          + " [--count N] [--timeout-s S] [--property KEY=VALUE ...]\n"
          + "  --schemas DIR  every *.avsc under DIR is a writer schema it can read\n"
          + "  --reader FILE  this consumer's own schema (the alert.v1 version it was written for)\n"
          + "  --count N      exit 0 after N alerts (default: run until killed)\n"
          + "  --timeout-s S  exit 2 if fewer than N alerts came within S seconds\n"
          + "  --property K=V a Kafka consumer setting, e.g. security.protocol=SASL_SSL";

  private AlertsConsumer() {}

  public static void main(String[] args) throws IOException {
    String bootstrap = null;
    String topic = null;
    Path schemas = null;
    Path reader = null;
    long count = 0;
    double timeoutS = 0;
    Properties props = new Properties();
    for (int i = 0; i < args.length; i++) {
      String value = i + 1 < args.length ? args[i + 1] : null;
      switch (args[i]) {
        case "--bootstrap" -> bootstrap = value;
        case "--topic" -> topic = value;
        case "--schemas" -> schemas = value == null ? null : Path.of(value);
        case "--reader" -> reader = value == null ? null : Path.of(value);
        case "--count" -> count = value == null ? 0 : Long.parseLong(value);
        case "--timeout-s" -> timeoutS = value == null ? 0 : Double.parseDouble(value);
        case "--property" -> {
          String[] setting = value == null ? new String[0] : value.split("=", 2);
          if (setting.length != 2) {
            usage("--property takes KEY=VALUE");
          }
          props.put(setting[0], setting[1]);
        }
        case "--help", "-h" -> {
          System.out.println(USAGE);
          return;
        }
        default -> usage("unknown argument " + args[i]);
      }
      i++;
    }
    if (bootstrap == null || topic == null || schemas == null || reader == null) {
      usage("--bootstrap, --topic, --schemas and --reader are required");
    }

    Schema readerSchema = parse(reader);
    SchemaStore.Cache store = new SchemaStore.Cache();
    for (Schema writer : released(schemas)) {
      store.addSchema(writer);
    }
    BinaryMessageDecoder<GenericRecord> decoder =
        new BinaryMessageDecoder<>(GenericData.get(), readerSchema, store);

    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());

    PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
    long seen = 0;
    long deadline = timeoutS > 0 ? System.nanoTime() + (long) (timeoutS * 1e9) : Long.MAX_VALUE;
    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
      List<TopicPartition> partitions = new ArrayList<>();
      for (PartitionInfo info : consumer.partitionsFor(topic)) {
        partitions.add(new TopicPartition(topic, info.partition()));
      }
      if (partitions.isEmpty()) {
        System.err.printf("topic %s does not exist on %s%n", topic, bootstrap);
        System.exit(1);
      }
      consumer.assign(partitions);
      consumer.seekToBeginning(partitions);
      while ((count == 0 || seen < count) && System.nanoTime() < deadline) {
        for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofMillis(200))) {
          if (record.value() == null) {
            skip(record, "empty record (no value)");
            continue;
          }
          try {
            GenericRecord alert = decoder.decode(record.value());
            out.println(GenericData.get().toString(alert)); // renders JSON
            seen++;
          } catch (IOException | AvroRuntimeException e) {
            skip(record, e.toString());
          }
        }
      }
    }
    if (count > 0 && seen < count) {
      System.err.printf("only %d of %d alerts within %.0f s%n", seen, count, timeoutS);
      System.exit(2);
    }
  }

  /** A bad record is reported with where it is, and skipped: the stream goes on. */
  private static void skip(ConsumerRecord<byte[], byte[]> record, String reason) {
    System.err.printf(
        "skipped undecodable record %s[%d]@%d: %s%n",
        record.topic(), record.partition(), record.offset(), reason);
  }

  /** Every schema under {@code folder}, each file parsed on its own (versions share names). */
  private static List<Schema> released(Path folder) throws IOException {
    List<Schema> found = new ArrayList<>();
    try (Stream<Path> files = Files.walk(folder)) {
      for (Path file : files.filter(f -> f.toString().endsWith(".avsc")).sorted().toList()) {
        Schema schema = parse(file);
        found.add(schema);
        System.err.printf(
            "writer schema %s %s from %s%n", schema.getFullName(), fingerprint(schema), file);
      }
    }
    if (found.isEmpty()) {
      usage("no *.avsc under " + folder);
    }
    return found;
  }

  /** As on the wire after C3 01: CRC-64-AVRO of the canonical form, little-endian, in hex. */
  private static String fingerprint(Schema schema) {
    StringBuilder hex = new StringBuilder();
    try {
      for (byte b : SchemaNormalization.parsingFingerprint("CRC-64-AVRO", schema)) {
        hex.append(String.format("%02x", b));
      }
    } catch (java.security.NoSuchAlgorithmException e) {
      throw new IllegalStateException(e);
    }
    return hex.toString();
  }

  private static Schema parse(Path file) throws IOException {
    return new Schema.Parser().parse(file.toFile());
  }

  private static void usage(String problem) {
    System.err.println(problem + "\n" + USAGE);
    System.exit(64);
  }
}
