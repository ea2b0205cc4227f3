"""The travel booking example under both interpreters: a car only when the hotel says so, and
the flight never told."""

from __future__ import annotations

import doctest
from collections.abc import Callable
from typing import Any

import pytest

import accompanist as ac
from examples import travel
from examples.travel import Cars, Flights, Hotels, Trip, make_trip

RUNNERS = {"central": ac.run_central, "projected": ac.testing.run_projected}


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest) -> Callable[..., Any]:
    return RUNNERS[request.param]


def test_docstring_and_doctests() -> None:
    assert travel.__doc__ and doctest.testmod(travel).failed == 0


def test_a_car_only_where_the_hotel_is_far(run: Callable[..., Any]) -> None:
    flights, hotels, cars = Flights(seats=5), Hotels(), Cars(per_city=2)
    trip = make_trip(flights, hotels, cars)
    near = run(trip, Trip("ada", "Lisbon", 3))
    assert near == {"traveller": "ada", "flight": "seat 1 to Lisbon", "hotel": "Baixa Inn", "car": None}
    far = run(trip, Trip("bob", "Reykjavik", 2))
    assert far["car"] == "car-Reykjavik-1 at Lava Lodge, Route 41" and far["hotel"] == "Lava Lodge"
    assert (flights.seats, len(hotels.booked), len(cars.rented)) == (3, 2, 1)


def test_no_car_left_cancels_the_room_and_the_seat(run: Callable[..., Any]) -> None:
    flights, hotels, cars = Flights(seats=5), Hotels(), Cars(per_city=1)
    trip = make_trip(flights, hotels, cars)
    run(trip, Trip("bob", "Reykjavik", 2))
    with pytest.raises(ac.SessionFailedError) as failed:
        run(trip, Trip("cyd", "Reykjavik", 1))
    f = failed.value.failure
    assert (failed.value.status, f.role, f.transaction, f.message) == (
        "compensated", "car", "rent_car", "no car left in Reykjavik"
    )  # fmt: skip
    assert (flights.seats, len(flights.booked), len(hotels.booked), len(cars.rented)) == (4, 1, 1, 1)


async def test_only_the_roles_that_must_know_are_told() -> None:
    trip = make_trip(Flights(seats=5), Hotels(), Cars(per_city=1))
    for city in ("Lisbon", "Reykjavik"):
        run = await ac.CentralRunner(trip).run(Trip("ada", city, 1))
        messages = [e for e in run.trace if e.dsts]
        assert all(e.src == "client" for e in messages if "flight" in e.dsts), messages
        choice = next(e for e in messages if e.src == "hotel")  # the hotel's decision
        assert set(choice.dsts) == {"car", "client"} and choice.value == repr(city == "Reykjavik")
