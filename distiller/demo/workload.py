"""The demo's workload: support tickets whose answer is mostly copied out of the message.

Pure and deterministic by seed. A long system prompt (role, JSON schema, rules, two examples) asks
for `{"order_id", "city", "product", "issue"}`; each user message is a ticket built from templates ×
cities × products × issue phrasings × order ids × greetings in a few languages. Three of the four
fields are copied verbatim and the fourth is a keyword the message contains, which is what a small
teacher such as SmolLM2-135M can do reliably. The tickets are split by index into a train part (sent
through the gateway before distillation) and a held-out part (replayed after it).

A share of the held-out part (`unusual_fraction`, a quarter by default) is traffic no training ticket looks
like — a ticket written wholly in another language, a question with no order, several orders at once, a
garbled or cut-off message — the requests a student should hand back to the teacher, so that the cascade's
threshold has something to decide.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Generic, TypeVar

TASK = "support-extract"
# how the app hands a ticket over; the trailing "JSON:" is what makes a 135M model answer in JSON
USER_FORMAT = "Ticket: {ticket}\nJSON:"

ISSUES: tuple[str, ...] = ("damaged", "late", "missing", "wrong")

SYSTEM_PROMPT = """\
You are TicketBot, the support-ticket extraction assistant of Northwind Retail. You read one customer \
ticket and output one JSON object with four keys: "order_id" (the order number, digits only, as a \
string), "city" (the city named in the ticket), "product" (the product, lowercase, without "the" or \
"my") and "issue" (one word: "damaged", "late", "missing" or "wrong").

Rules:
1. Copy the values from the ticket; never invent, translate or correct them.
2. Ignore greetings and thanks in any language (Hola, Bonjour, Hallo, Ciao, Olá, Hej).
3. Broken or damaged item: "damaged". Late delivery: "late". Lost parcel or missing part: "missing". \
Wrong size, colour or model: "wrong".
4. Output only the JSON object, on one line, with no explanation.

Ticket: Hi, my order 73190 of the toaster to Dublin arrived damaged.
JSON: {"order_id": "73190", "city": "Dublin", "product": "toaster", "issue": "damaged"}

Ticket: Bonjour! Writing from Seoul about order 50244: the desk lamp is still late.
JSON: {"order_id": "50244", "city": "Seoul", "product": "desk lamp", "issue": "late"}
"""

# Values SmolLM2-135M copies reliably. In a first run (seed 0, 300 tickets) the teacher swapped some others for the
# system prompt's example values in 30-90% of tickets (tent, kettle, headphones → "toaster"; Perth, Paris, Leeds →
# "Seoul"), errors a student trained without the prompt cannot learn; those values were dropped. The examples' own
# values (Dublin, Seoul, toaster, desk lamp) never occur in tickets. The template "the {product} I sent to {city}
# (order {order_id}) {phrase}" was dropped for the same reason (half its city answers were wrong).
CITIES: tuple[str, ...] = ("Hanoi", "Krakow", "Lima", "Porto", "Quito", "Lagos", "Bogota", "Kyiv", "Accra", "Austin")
PRODUCTS: tuple[str, ...] = ("monitor", "printer", "bicycle", "phone charger", "sofa", "vacuum cleaner",
                             "coffee grinder", "rice cooker", "blender", "camera", "keyboard")
# English, Portuguese, Spanish, French, Italian, German ("Hej" made the teacher echo the ticket a quarter of the time)
GREETINGS: tuple[str, ...] = ("Hi,", "Hello,", "Good morning,", "Hey there,", "Olá,", "Hola,", "Bonjour,", "Ciao,",
                              "Hallo,")
# each phrasing contains its issue word, so the answer's fourth field is a keyword the ticket holds
PHRASINGS: dict[str, tuple[str, ...]] = {
    "damaged": ("arrived damaged", "is damaged", "came damaged"),
    "late": ("is late", "arrived late", "is very late"),
    "missing": ("is missing", "went missing", "is still missing"),
    "wrong": ("is wrong", "was wrong", "looks wrong"),
}
TEMPLATES: tuple[str, ...] = (
    "{greeting} my order {order_id} of the {product} to {city} {phrase}.",
    "{greeting} order number {order_id}: the {product} shipped to {city} {phrase}.",
    "{greeting} writing from {city} about order {order_id}. The {product} {phrase}.",
    "{greeting} {city} here. My {product}, order {order_id}, {phrase}.",
    "{greeting} I live in {city}. The {product} from order {order_id} {phrase}.",
    "{greeting} in {city}, my {product} from order {order_id} {phrase}.",
    "{greeting} order {order_id}, the {product} for {city}: it {phrase}.",
)


# tickets unlike any in training, by kind (see `unusual_ticket`)
UNUSUAL_KINDS: tuple[str, ...] = ("other-language", "no-order", "several-orders", "garbled")
FOREIGN: tuple[str, ...] = (
    "Hola, mi pedido {order_id} para {city} llegó roto y nadie me contesta.",
    "Guten Tag, meine Bestellung {order_id} nach {city} ist beschädigt angekommen.",
    "Bonjour, ma commande {order_id} pour {city} est arrivée en retard, encore.",
    "Olá, a minha encomenda {order_id} para {city} nunca chegou.",
)
QUESTIONS: tuple[str, ...] = (
    "Hi, do you ship a {product} to {city}? I have not ordered anything yet.",
    "Hello, what does a {product} cost if I pick it up in {city}?",
    "Hey there, can I pay for a {product} in instalments? I live in {city}.",
)


@dataclass(frozen=True, slots=True)
class Ticket:
    message: str
    fields: dict[str, str]  # what a perfect extraction gives (for information; parity is vs the teacher)
    kind: str = "regular"  # or one of UNUSUAL_KINDS: held-out traffic unlike the training tickets


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TicketSplit(Generic[T]):
    """A demo task's tickets: the first `train_count` are captured for training, the rest held out."""

    task: str
    system_prompt: str
    tickets: tuple[T, ...]
    train_count: int

    @property
    def train(self) -> tuple[T, ...]:
        return self.tickets[:self.train_count]

    @property
    def held_out(self) -> tuple[T, ...]:
        return self.tickets[self.train_count:]

    @property
    def train_indices(self) -> range:
        return range(self.train_count)

    @property
    def held_out_indices(self) -> range:
        return range(self.train_count, len(self.tickets))


@dataclass(frozen=True, slots=True)
class Workload(TicketSplit[Ticket]):
    def messages(self, ticket: Ticket) -> list[dict[str, str]]:
        """The chat request's messages: the long system prompt, then the ticket as the app formats it."""
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": USER_FORMAT.format(ticket=ticket.message)}]


def unusual_ticket(kind: str, rng: random.Random, order_id: str) -> Ticket:
    """One held-out ticket of an unusual kind. Its `fields` hold what can be read from it (for information)."""
    city, product = rng.choice(CITIES), rng.choice(PRODUCTS)
    if kind == "other-language":
        message = rng.choice(FOREIGN).format(order_id=order_id, city=city)
        return Ticket(message, {"order_id": order_id, "city": city}, kind)
    if kind == "no-order":
        return Ticket(rng.choice(QUESTIONS).format(product=product, city=city), {"city": city, "product": product},
                      kind)
    if kind == "several-orders":
        other_city, other_product = rng.choice(CITIES), rng.choice(PRODUCTS)
        other_id = str(rng.randrange(10_000, 100_000))
        message = (f"{rng.choice(GREETINGS)} two problems: order {order_id}, the {product} to {city}, is late, and "
                   f"order {other_id}, the {other_product} to {other_city}, arrived damaged.")
        return Ticket(message[0].upper() + message[1:], {}, kind)
    if kind == "garbled":
        text = rng.choice(TEMPLATES).format(greeting=rng.choice(GREETINGS), phrase=rng.choice(PHRASINGS["late"]),
                                            order_id=order_id, city=city, product=product)
        cut = text[:rng.randrange(12, 24)]  # cut off mid-sentence, keys pressed at random
        noise = "".join(rng.choice("qxzj#@%&*0123456789 ") for _ in range(rng.randrange(8, 16)))
        return Ticket(f"{cut}{noise}", {}, kind)
    raise ValueError(f"unknown ticket kind {kind!r}; expected one of {', '.join(UNUSUAL_KINDS)}")


def build_workload(requests: int = 240, *, train_fraction: float = 0.8, seed: int = 0,
                   unusual_fraction: float = 0.25) -> Workload:
    """`requests` distinct tickets; the first `train_fraction` of them (by index) are the train part, and
    `unusual_fraction` of the held-out part are unusual tickets (kinds in turn, at random places)."""
    if requests < 2:
        raise ValueError("requests must be at least 2 (one to train on, one held out)")
    if not 0 < train_fraction < 1:
        raise ValueError("train_fraction must be in (0, 1)")
    if not 0 <= unusual_fraction < 1:
        raise ValueError("unusual_fraction must be in [0, 1)")
    rng = random.Random(seed)
    tickets: list[Ticket] = []
    seen_messages: set[str] = set()
    seen_ids: set[str] = set()
    while len(tickets) < requests:
        order_id = str(rng.randrange(10_000, 100_000))
        if order_id in seen_ids:
            continue
        issue = rng.choice(ISSUES)
        fields = {"order_id": order_id, "city": rng.choice(CITIES), "product": rng.choice(PRODUCTS), "issue": issue}
        template = rng.choice(TEMPLATES)
        message = template.format(greeting=rng.choice(GREETINGS), phrase=rng.choice(PHRASINGS[issue]), **fields)
        message = message[0].upper() + message[1:]
        if message in seen_messages:
            continue
        seen_ids.add(order_id)
        seen_messages.add(message)
        tickets.append(Ticket(message, fields))
    train_count = min(requests - 1, max(1, round(requests * train_fraction)))
    held_out = len(tickets) - train_count
    unusual = round(held_out * unusual_fraction)
    # a random generator of its own: the regular tickets stay the same whatever the unusual share
    place = random.Random(f"{seed}-unusual")
    for n, index in enumerate(sorted(place.sample(range(train_count, len(tickets)), unusual))):
        tickets[index] = unusual_ticket(UNUSUAL_KINDS[n % len(UNUSUAL_KINDS)], place, tickets[index].fields["order_id"])
    return Workload(TASK, SYSTEM_PROMPT, tuple(tickets), train_count)


_ORDER_ID = re.compile(r"(?<!\d)\d{5}(?!\d)")


def _first_of(message: str, names: tuple[str, ...]) -> str | None:
    found = [(match.start(), name) for name in names
             if (match := re.search(rf"\b{re.escape(name)}\b", message, re.IGNORECASE))]
    # the longest name at the earliest position ("coffee grinder" before a shorter name inside it)
    return min(found, key=lambda hit: (hit[0], -len(hit[1])))[1] if found else None


def expected_fields(message: str) -> dict[str, str | None]:
    """The extraction a perfect model gives for a ticket of this workload (None: the ticket lacks it).
    For information only: the demo's parity is measured against the teacher's answers."""
    order = _ORDER_ID.search(message)
    issue = next((name for name in ISSUES for phrase in PHRASINGS[name] if phrase in message), None)
    return {"order_id": order.group(0) if order else None, "city": _first_of(message, CITIES),
            "product": _first_of(message, PRODUCTS), "issue": issue}
