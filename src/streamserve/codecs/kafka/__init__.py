"""Transport-aware codecs: those that need a Kafka client library (the ``kafka`` extra).

The home of codecs that cannot decode a record from its bytes alone, such as Avro, Protobuf or
JSON Schema records whose schema id (in the payload's Confluent framing or in a header) is
resolved through a schema registry, with the subject named after ``InputRecord.topic``. One
module per codec, registered in :data:`streamserve.codecs.registry.BUILTIN_CODECS` by its
``module:function`` name and imported only when built; its client library is imported inside
the factory, and a missing one raises :class:`streamserve.errors.ConfigurationError` naming the
extra to install.

import-linter holds the shape: these modules may import ``confluent_kafka``; the built-in codecs
(``base``, ``registry``, ``json``, ``csv``, ``protobuf``) import neither it nor this package,
and no codec imports the web framework, the metrics library or the runtimes.
"""
