"""Travel booking: a flight, a hotel, and a car only when the hotel says one is needed.

Roles: ``client`` (the initiator), ``flight``, ``hotel`` and ``car``. Adapted from the Java
original's travel application (after DeathStarBench's hotel reservation), as a saga with a
real choice in it:

1. The client sends the trip to the flight and the hotel at once; each books (a transaction,
   compensated by cancelling), at the same time, since neither depends on the other.
2. The hotel knows how far it is from the airport: it alone decides whether the traveller
   needs a car, and tells only the roles that must know: the car rental and the client
   (``ch.cond(..., among=[Car, Client])``). The flight never learns the choice, and takes no
   part in that branch.
3. If a car is needed, the hotel sends its address to the car rental, which rents a car
   there (a transaction, compensated by returning it) and tells the client.
4. The client puts the itinerary together.

A rental that cannot be made (no car left at the destination) fails the saga: the room and
the seat are cancelled, and every role ends ``compensated``.

Offices are ordinary objects handed to :func:`make_trip`, so each test or sidecar owns its
own; the choreography's result at the client is a plain dict.

>>> flights, hotels, cars = Flights(seats=2), Hotels(), Cars(per_city=1)
>>> trip = make_trip(flights, hotels, cars)
>>> ac.run_central(trip, Trip("ada", "Lisbon", 3))["car"] is None
True
>>> ac.run_central(trip, Trip("bob", "Reykjavik", 2))["car"]
'car-Reykjavik-1 at Lava Lodge, Route 41'
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec

import accompanist as ac

__all__ = ["Booking", "Car", "Cars", "Client", "Flight", "Flights", "Hotel", "Hotels", "Trip", "make_trip"]

Client, Flight, Hotel, Car = ac.roles("client", "flight", "hotel", "car")


class Trip(msgspec.Struct, frozen=True):
    """What the traveller asks for."""

    traveller: str
    city: str
    nights: int


class Booking(msgspec.Struct, frozen=True):
    """The trip with the id the client drew for it (``ch.uuid``: a replay draws the same)."""

    trip_id: str
    trip: Trip


def _key(ctx: ac.TxContext, booking_id: str) -> str:
    # The runtime's key repeats on a replay, which is the point; the trip id tells two trips
    # apart even where session ids repeat (the test interpreters give every run the same one).
    return f"{ctx.idempotency_key}/{booking_id}"


HOTELS: dict[str, tuple[str, str, int]] = {
    "Lisbon": ("Baixa Inn", "Rua Augusta 12", 7),
    "Reykjavik": ("Lava Lodge", "Route 41", 48),
    "Zurich": ("Limmat House", "Limmatquai 3", 10),
}
"""Per city: the hotel, its address, and its distance from the airport in km."""

CAR_NEEDED_KM = 15
"""Farther than this from the airport, the hotel says the traveller needs a car."""


@dataclass
class Flights:
    """The airline: seats left, and what is booked."""

    seats: int
    booked: dict[str, str] = field(default_factory=dict)

    async def book(self, ctx: ac.TxContext, booking: Booking) -> str:
        """Book a seat (once per key)."""
        key = _key(ctx, booking.trip_id)
        if key not in self.booked:
            if self.seats <= 0:
                raise ac.Abort(f"no seat left to {booking.trip.city}")
            self.seats -= 1
            self.booked[key] = f"seat {len(self.booked) + 1} to {booking.trip.city}"
        return self.booked[key]

    async def cancel(self, ctx: ac.TxContext, booking: Booking, seat: str | None) -> None:
        """Give the seat back."""
        if self.booked.pop(_key(ctx, booking.trip_id), None) is not None:
            self.seats += 1


@dataclass
class Hotels:
    """The hotel chain: rooms booked, by idempotency key."""

    booked: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def book(self, ctx: ac.TxContext, booking: Booking) -> dict[str, Any]:
        """Book a room in the chain's hotel in the trip's city."""
        trip = booking.trip
        if trip.city not in HOTELS:
            raise ac.Abort(f"no hotel in {trip.city}")
        name, address, km = HOTELS[trip.city]
        room = {"hotel": name, "address": address, "km_from_airport": km, "nights": trip.nights}
        return self.booked.setdefault(_key(ctx, booking.trip_id), room)

    async def cancel(self, ctx: ac.TxContext, booking: Booking, room: dict[str, Any] | None) -> None:
        """Cancel the room."""
        self.booked.pop(_key(ctx, booking.trip_id), None)


@dataclass
class Cars:
    """The car rental: cars per city, and the rentals made."""

    per_city: int
    rented: dict[str, str] = field(default_factory=dict)

    async def rent(self, ctx: ac.TxContext, where: dict[str, Any]) -> str:
        """Rent a car delivered to the hotel."""
        key = _key(ctx, str(where["trip_id"]))
        if key not in self.rented:
            city = str(where["city"])
            taken = sum(1 for r in self.rented.values() if r.startswith(f"car-{city}-"))
            if taken >= self.per_city:
                raise ac.Abort(f"no car left in {city}")
            self.rented[key] = f"car-{city}-{taken + 1} at {where['hotel']}, {where['address']}"
        return self.rented[key]

    async def give_back(self, ctx: ac.TxContext, where: dict[str, Any], car: str | None) -> None:
        """Return the car."""
        self.rented.pop(_key(ctx, str(where["trip_id"])), None)


def needs_car(room: dict[str, Any]) -> bool:
    """The hotel's own judgement: far from the airport, you need a car."""
    return int(room["km_from_airport"]) > CAR_NEEDED_KM


def pickup(booking: Booking, room: dict[str, Any]) -> dict[str, Any]:
    """Where the car goes: the hotel (the car rental learns nothing else of the trip)."""
    return {"trip_id": booking.trip_id, "city": booking.trip.city, "hotel": room["hotel"], "address": room["address"]}


def with_id(trip: Trip, trip_id: uuid.UUID) -> Booking:
    """The trip under the id the client drew."""
    return Booking(str(trip_id), trip)


def itinerary(trip: Trip, seat: str, room: dict[str, Any], car: str | None) -> dict[str, Any]:
    """What the client gets back."""
    return {"traveller": trip.traveller, "flight": seat, "hotel": room["hotel"], "car": car}


def make_trip(flights: Flights, hotels: Hotels, cars: Cars) -> ac.Choreography:
    """The travel booking choreography over these offices."""
    book_seat = ac.transaction(compensate=flights.cancel, name="book_seat")(flights.book)
    book_room = ac.transaction(compensate=hotels.cancel, name="book_room")(hotels.book)
    rent_car = ac.transaction(compensate=cars.give_back, name="rent_car")(cars.rent)

    @ac.choreography("trip", roles=(Client, Flight, Hotel, Car), types=[Trip, Booking])
    async def trip(ch: ac.Choreo, request: ac.Located[Trip]) -> ac.Located[dict[str, Any]]:
        """Book a flight and a hotel, and a car when the hotel says one is needed."""
        booking = await ch.locally(Client, with_id, request, await ch.uuid(Client))
        wanted = await ch.comm(Client, [Flight, Hotel], booking)
        seat = await ch.transaction(Flight, book_seat, wanted)  # the flight and the hotel book
        room = await ch.transaction(Hotel, book_room, wanted)  # at the same time
        needed = await ch.locally(Hotel, needs_car, room)

        async def car_if_needed(ch: ac.Choreo, yes: bool) -> ac.Located[str | None]:
            # Only the hotel, the car rental and the client run this: the flight is not told.
            if not yes:
                return await ch.locally(Client, lambda: None)
            where = await ch.comm(Hotel, Car, await ch.locally(Hotel, pickup, wanted, room))
            rental = await ch.transaction(Car, rent_car, where)
            return await ch.comm(Car, Client, rental)

        car = await ch.cond(Hotel, needed, car_if_needed, among=[Car, Client])
        seat_at_client = await ch.comm(Flight, Client, seat)
        room_at_client = await ch.comm(Hotel, Client, room)
        return await ch.locally(Client, itinerary, request, seat_at_client, room_at_client, car)

    return trip
