"""Known defect (issue 15 review):
on the test broker, deleting one SCRAM user and restarting loses them all.

tests/apache_kafka.py promises SCRAM users "created when the storage is formatted" that clients
authenticate as; test_kafka_security.py's ``test_credentials_deleted_while_it_serves_stop_the_
replica_at_its_next_connection`` deletes one user, restarts the broker and asserts that the
replica of *that* user is refused.

On Apache Kafka 4.4.0 (single KRaft node, as the fixture runs it), after deleting one user's
SCRAM credential and restarting, the broker knows no SCRAM user at all (whether made by
``--add-scram`` at format time or by the Admin API): every client is refused. The security test
therefore cannot tell "the deleted user is refused" from "every user is refused"; and docs/
kafka.md's "a broker restart is no refusal" cannot be tested after any user change on this
broker. Which deletions lose the others depends on the names (users alice, bob, carol kept bob
and carol after alice was deleted; a, b, c lost all; the security test's streamserve and
retired lose streamserve, as this test shows).
"""

from __future__ import annotations

import pytest
from apache_kafka import SaslSsl, running_apache_kafka
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ScramMechanism,
    UserScramCredentialDeletion,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# test_kafka_security.py's users: it deletes "retired" and expects "streamserve" to stay.
USERS = {"streamserve": "streamserve-secret", "retired": "retired-secret"}


def _users(bootstrap: str) -> list[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return sorted(admin.describe_user_scram_credentials().result(30))


def test_deleting_one_scram_user_and_restarting_keeps_the_others() -> None:
    with running_apache_kafka(sasl_ssl=SaslSsl("SCRAM-SHA-512", USERS)) as kafka:
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        deletion = UserScramCredentialDeletion("retired", ScramMechanism.SCRAM_SHA_512)
        for future in admin.alter_user_scram_credentials([deletion]).values():
            future.result(30)
        before = _users(kafka.bootstrap)
        kafka.restart()
        after = _users(kafka.bootstrap)
    assert before == ["streamserve"]
    assert after == ["streamserve"], (
        "tests/apache_kafka.py's SCRAM users do not survive a restart after another user is "
        f"deleted (Apache Kafka 4.4.0): users before the restart {before}, after it {after}; "
        "test_kafka_security.py's deleted-credentials test passes whichever user it deletes"
    )
