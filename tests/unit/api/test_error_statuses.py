"""Each family of refused requests answers its HTTP status."""

from __future__ import annotations

import pytest

from streamserve import errors
from streamserve.api.app import status_of
from streamserve.errors import RequestError


def request_errors(cls: type[RequestError] = RequestError) -> list[type[RequestError]]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in request_errors(child))]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.InvalidRequestError, 400),
        (errors.NotAuthenticatedError, 401),
        (errors.AdminDisabledError, 403),
        (errors.AccessDeniedError, 403),
        (errors.KeyNotFoundError, 404),
        (errors.ModelNotFoundError, 404),
        (errors.NotFoundError, 404),
        (errors.NothingToRollBackError, 409),
        (errors.RequestTooLargeError, 413),
        (errors.RequestTimeoutError, 408),
        (errors.RequestError, 400),
    ],
)
def test_a_refused_request_answers_its_status(error: type[RequestError], status: int) -> None:
    assert status_of(error("refused")) == status


def test_every_request_error_of_the_tree_is_a_client_error() -> None:
    assert len(request_errors()) >= 9
    for error in request_errors():
        assert 400 <= status_of(error("refused")) < 500, error
