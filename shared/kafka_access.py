"""What a Kafka client needs to connect: the broker accepts only SASL/SCRAM-SHA-512 clients.

Every client of the project (services, CLI, simulation, benchmark, tests) is built from a
`KafkaAccess`, so that no code path can reach the broker anonymously.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from faststream.security import SASLScram512
from pydantic import BaseModel, ConfigDict, SecretStr

SCRAM_MECHANISM = "SCRAM-SHA-512"
SecurityProtocol = Literal["SASL_PLAINTEXT", "SASL_SSL"]


class KafkaAccess(BaseModel):
    """One principal's way into the broker (its password never shows in a repr or a log)."""

    model_config = ConfigDict(frozen=True)

    bootstrap: str
    username: str
    password: SecretStr
    security_protocol: SecurityProtocol = "SASL_PLAINTEXT"
    ssl_cafile: Path | None = None

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producer, consumer and admin client."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password.get_secret_value(),
        }
        if self.security_protocol == "SASL_SSL":
            options["ssl_context"] = self._ssl_context()
        return options

    def bootstrap_servers(self) -> list[str]:
        """Every node of `bootstrap`, one address each: faststream takes a string as one
        single address, so a cluster's "a:1,b:2,c:3" must be given as a list."""
        return [address.strip() for address in self.bootstrap.split(",") if address.strip()]

    def faststream_security(self) -> SASLScram512:
        """The same credentials for a faststream `KafkaBroker(security=...)`."""
        if self.security_protocol == "SASL_SSL":
            return SASLScram512(
                self.username, self.password.get_secret_value(),
                ssl_context=self._ssl_context(), use_ssl=True,
            )
        return SASLScram512(self.username, self.password.get_secret_value())

    def librdkafka_config(self) -> dict[str, str]:
        """The same, as librdkafka (confluent-kafka, kcat) names its properties."""
        config = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol,
            "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.username": self.username,
            "sasl.password": self.password.get_secret_value(),
        }
        if self.ssl_cafile is not None:
            config["ssl.ca.location"] = str(self.ssl_cafile)
        return config

    def with_bootstrap(self, bootstrap: str) -> KafkaAccess:
        return self.model_copy(update={"bootstrap": bootstrap})

    def _ssl_context(self) -> ssl.SSLContext:
        cafile = str(self.ssl_cafile) if self.ssl_cafile is not None else None
        return ssl.create_default_context(cafile=cafile)
