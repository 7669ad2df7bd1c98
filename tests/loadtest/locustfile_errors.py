"""A locustfile whose user breaks every request (a wrong input name): its runs must fail.

Run with the user's name so that only it runs:
    locust -f tests/loadtest/locustfile_errors.py WrongInputNameUser --headless ...
"""

from __future__ import annotations

from loadtest.locustfile import *  # noqa: F403  (the options and the thresholds)
from loadtest.users import HttpClassifierUser


class WrongInputNameUser(HttpClassifierUser):
    input_name = "not_an_input"
