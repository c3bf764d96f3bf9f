"""Errors cross HTTP as ``{code, error, fields}``: the server's class comes back to the client."""

from __future__ import annotations

import inspect

import httpx
import pytest

from fedsilo import errors
from fedsilo.api._client import _answer_error
from fedsilo.errors import (
    ERROR_CODES,
    HTTP_STATUS,
    CertificateRefused,
    Conflict,
    FedsiloError,
    NotFound,
    UploadCorrupted,
    error_class,
)
from fedsilo.transport._http import error_response


def test_the_table_and_the_classes_agree_both_ways() -> None:
    for code, cls in ERROR_CODES.items():
        assert cls.code == code
    own_codes = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, FedsiloError) and "code" in vars(cls)
    }
    assert own_codes == set(ERROR_CODES.values())  # every class with a code is in the table
    assert len({cls.code for cls in own_codes}) == len(own_codes)  # and no code twice
    assert set(HTTP_STATUS) <= set(ERROR_CODES)


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_each_code_a_server_sends_is_raised_as_its_class(code: str) -> None:
    status = HTTP_STATUS.get(code, 400)
    sent = error_response(status, f"what went wrong: {code}", code=code)
    received = _answer_error(httpx.Response(status, content=bytes(sent.body)), "alice")
    assert isinstance(received, ERROR_CODES[code])
    assert f"what went wrong: {code}" in str(received)


@pytest.mark.parametrize(
    ("status", "cls"),
    [(404, NotFound), (409, Conflict), (403, CertificateRefused), (500, FedsiloError)],
)
def test_an_answer_without_a_code_gets_the_code_of_its_status(
    status: int, cls: type[FedsiloError]
) -> None:
    sent = error_response(status, "no job 'x'")
    assert type(_answer_error(httpx.Response(status, content=bytes(sent.body)), "a")) is cls


def test_a_code_this_version_does_not_know_is_a_plain_fedsilo_error() -> None:
    assert error_class("from-the-future") is FedsiloError
    answer = httpx.Response(400, json={"code": "from-the-future", "error": "something new"})
    received = _answer_error(answer, "alice")
    assert type(received) is FedsiloError and "something new" in str(received)
    assert isinstance(UploadCorrupted("x"), errors.TransportError)
