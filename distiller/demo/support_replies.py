"""The free-text demo workload: first replies to customer messages, under a long system prompt's rules.

Pure and deterministic by seed. The system prompt (about 480 tokens) sets the tone, the policy for four
kinds of request (a damaged item, a late parcel, a wrong item, a refund question) and the sign-off, with an
example reply per kind. Each user message is a help-desk ticket: the customer's name and order number, then a
message built from phrasings × products × what went wrong × an extra detail. SmolLM2-135M as teacher (measured
on the held-out part, 2026-12-07) greets by first name in 62% of its replies, repeats the order number in 44%,
names the product in 39% and signs off in 4%; it mostly goes on apologising until max_tokens. Parity is
measured against its answers, whatever they are, on the similarity scorer.

The tickets are split by index into a train part (sent through the gateway before distillation) and a
held-out part (replayed after it). A share of the held-out part (`unusual_fraction`, a quarter by default) is
traffic no training ticket looks like: a message in another language, a question with no order, a request
the policy does not cover, a garbled message — what a student should hand back to the teacher.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from distiller.demo.workload import TicketSplit

TASK = "support-replies"
# the help desk's ticket as the app hands it over; the trailing "Reply:" is the examples' cue
USER_FORMAT = "Message from {name} about order {order_id}: {message}\nReply:"
USER_FORMAT_NO_ORDER = "Message from {name}: {message}\nReply:"  # a question before ordering

KINDS: tuple[str, ...] = ("damaged", "late", "wrong", "refund")

SYSTEM_PROMPT = """\
You are Nora, the support assistant of Northwind Retail, an online shop for home appliances, electronics \
and clothing. The help desk sends you one ticket at a time; you write the first reply.

Style: warm, calm and brief; plain English; one paragraph; no lists, emojis or exclamation marks; never \
repeat a sentence. Begin with "Dear" and the customer's first name. Thank them for writing about the \
product and repeat the order number. Then say what happens next under our policy, and promise nothing more:
- damaged or broken item: a free replacement ships within 2 business days;
- late or lost parcel: we ask the courier and email a new tracking link within 24 hours;
- wrong item, size or colour: we email a free return label today;
- refund question: the refund reaches the original card within 5 business days of the return arriving.
Never offer discounts or vouchers, never ask for passwords or card numbers. End with "Warm regards, Nora".

Message from Maria Lopez about order 48213: My blender arrived with a cracked jug.
Reply: Dear Maria, thank you for writing about your blender, order 48213. A free replacement ships within 2 \
business days. Warm regards, Nora

Message from Tom Becker about order 51907: The parcel with my desk fan is a week late.
Reply: Dear Tom, thank you for writing about your desk fan, order 51907. We have asked the courier and will \
email a new tracking link within 24 hours. Warm regards, Nora

Message from Ana Costa about order 20554: I got a green scarf, not the grey one I ordered.
Reply: Dear Ana, thank you for writing about your scarf, order 20554. We will email you a free return label \
today. Warm regards, Nora

Message from Ravi Shah about order 38710: I sent the monitor back. When is my refund coming?
Reply: Dear Ravi, thank you for writing about your monitor, order 38710. The refund reaches your card within \
5 business days of the return arriving. Warm regards, Nora
"""

# The examples' own values (Maria, Tom, Ana, Ravi; blender, desk fan, scarf, monitor) never occur in tickets.
FIRST_NAMES: tuple[str, ...] = (
    "Aisha", "Ben", "Chloe", "Daniel", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kenji", "Laura",
    "Mateo", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Samuel", "Tara", "Umar", "Vera", "Wei", "Yusuf",
    "Zoe", "Lucia", "Peter", "Olga", "Diego", "Emma")
LAST_NAMES: tuple[str, ...] = (
    "Khan", "Walker", "Dubois", "Novak", "Rossi", "Haddad", "Lee", "Martin", "Silva", "Berg", "Sato", "Fischer",
    "Garcia", "Petrova", "Nilsson", "Patel", "Moreau", "Ferri", "Okafor", "Byrne", "Demir", "Ivanova", "Chen",
    "Ramos", "Wilson")
# (product, what goes wrong when it is damaged, a wrong variant: what came instead of what was ordered)
PRODUCTS: tuple[tuple[str, str, tuple[str, str]], ...] = (
    ("coffee grinder", "the lid is cracked", ("a black one", "the silver one")),
    ("rice cooker", "the inner pot is dented", ("the 1 litre model", "the 1.8 litre model")),
    ("kettle", "it leaks from the bottom", ("a white one", "the black one")),
    ("toaster", "the lever is broken", ("a two-slice toaster", "the four-slice one")),
    ("vacuum cleaner", "the hose is split", ("the corded model", "the cordless one")),
    ("microwave", "the door glass is cracked", ("a 20 litre microwave", "the 25 litre one")),
    ("headphones", "the headband snapped", ("the wired version", "the wireless one")),
    ("keyboard", "two keys are missing", ("a German layout", "the UK layout")),
    ("phone charger", "the cable is frayed", ("a USB-A charger", "the USB-C one")),
    ("webcam", "the lens is scratched", ("the 720p model", "the 1080p one")),
    ("tablet", "the screen is cracked", ("the 64 GB model", "the 128 GB one")),
    ("printer", "the paper tray is broken", ("the inkjet model", "the laser one")),
    ("winter coat", "the zip is torn", ("a size M", "a size L")),
    ("pair of boots", "the sole is coming off", ("a size 42", "a size 41")),
    ("sweater", "there is a hole in the sleeve", ("a red one", "the blue one")),
    ("rain jacket", "a seam is ripped", ("a yellow one", "the navy one")),
    ("pair of jeans", "the button fell off", ("a 32 waist", "a 34 waist")),
    ("backpack", "a strap is torn", ("the 20 litre one", "the 30 litre one")),
)
PHRASINGS: dict[str, tuple[str, ...]] = {
    "damaged": ("My {product} arrived broken: {damage}.", "The {product} came damaged, {damage}.",
                "I just unpacked the {product} and {damage}.", "The {product} I received is damaged: {damage}."),
    "late": ("My {product} has still not arrived, it is {days} days late.",
             "Where is my parcel? The {product} should have come {days} days ago.",
             "The tracking for my {product} has not moved for {days} days.",
             "My {product} is {days} days late and nobody has told me why."),
    "wrong": ("I ordered {ordered} but got {received}.", "You sent me {received} instead of {ordered}.",
              "The {product} is wrong: I received {received}, not {ordered}.",
              "Wrong item: {received} came, but I ordered {ordered}."),
    "refund": ("I returned the {product} {days} days ago. When will I get my refund?",
               "I sent the {product} back last week. Has my refund been processed?",
               "My return of the {product} arrived at your warehouse. When is the money coming back?",
               "Can you tell me when the refund for the {product} reaches my card?"),
}
DETAILS: tuple[str, ...] = ("", "", "It was meant to be a birthday present.", "I need it before the weekend.",
                            "This is the first time I have had a problem with your shop.",
                            "I have been a customer for years.", "I am a bit disappointed.")

# tickets unlike any in training, by kind (see `unusual_ticket`)
UNUSUAL_KINDS: tuple[str, ...] = ("other-language", "no-order", "out-of-policy", "garbled")
FOREIGN: tuple[str, ...] = (
    "Hola, mi {product} llegó roto y nadie me contesta. ¿Qué hago ahora?",
    "Guten Tag, mein Paket ist seit zwei Wochen unterwegs. Wo ist es?",
    "Bonjour, j'ai reçu le mauvais article et je voudrais un échange, s'il vous plaît.",
    "Olá, devolvi a encomenda há dez dias e ainda não recebi o reembolso.",
)
QUESTIONS: tuple[str, ...] = (
    "Do you ship a {product} to Norway? I have not ordered anything yet.",
    "Is the {product} you sell covered by a two-year warranty?",
    "Can I pay for a {product} in three instalments?",
)
OUT_OF_POLICY: tuple[str, ...] = (
    "Please change the delivery address: I moved last week.",
    "I was charged twice for the {product}. Please fix it.",
    "I want to cancel the order before it ships.",
    "Can I get a discount on my next order because the {product} was late?",
)


@dataclass(frozen=True, slots=True)
class ReplyTicket:
    name: str
    order_id: str  # "" when the message is about no order
    message: str
    product: str
    kind: str  # one of KINDS, or of UNUSUAL_KINDS: held-out traffic unlike the training tickets

    @property
    def first_name(self) -> str:
        return self.name.split()[0]


@dataclass(frozen=True, slots=True)
class ReplyWorkload(TicketSplit[ReplyTicket]):
    def messages(self, ticket: ReplyTicket) -> list[dict[str, str]]:
        """The chat request's messages: the long system prompt, then the ticket as the help desk formats it."""
        template = USER_FORMAT if ticket.order_id else USER_FORMAT_NO_ORDER
        content = template.format(name=ticket.name, order_id=ticket.order_id, message=ticket.message)
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": content}]


def _message(kind: str, product: tuple[str, str, tuple[str, str]], rng: random.Random) -> str:
    name, damage, (received, ordered) = product
    body = rng.choice(PHRASINGS[kind]).format(product=name, damage=damage, received=received, ordered=ordered,
                                              days=rng.randrange(3, 15))
    parts = [body, rng.choice(DETAILS)]
    return " ".join(p for p in parts if p)


def unusual_ticket(kind: str, rng: random.Random, name: str, order_id: str) -> ReplyTicket:
    """One held-out ticket of an unusual kind."""
    product = rng.choice(PRODUCTS)[0]
    if kind == "other-language":
        message = rng.choice(FOREIGN).format(product=product)
    elif kind == "no-order":
        return ReplyTicket(name, "", rng.choice(QUESTIONS).format(product=product), product, kind)
    elif kind == "out-of-policy":
        message = rng.choice(OUT_OF_POLICY).format(product=product)
    elif kind == "garbled":
        text = _message(rng.choice(KINDS), rng.choice(PRODUCTS), rng)
        noise = "".join(rng.choice("qxzj#@%&*0123456789 ") for _ in range(rng.randrange(8, 16)))
        message = f"{text[:rng.randrange(10, 20)]}{noise}"  # cut off mid-sentence, keys pressed at random
    else:
        raise ValueError(f"unknown ticket kind {kind!r}; expected one of {', '.join(UNUSUAL_KINDS)}")
    return ReplyTicket(name, order_id, message, product, kind)


def build_workload(requests: int = 300, *, train_fraction: float = 0.8, seed: int = 0,
                   unusual_fraction: float = 0.25) -> ReplyWorkload:
    """`requests` distinct tickets, kinds in turn; the first `train_fraction` of them (by index) are the train
    part, and `unusual_fraction` of the held-out part are unusual tickets (kinds in turn, at random places)."""
    if requests < 2:
        raise ValueError("requests must be at least 2 (one to train on, one held out)")
    if not 0 < train_fraction < 1:
        raise ValueError("train_fraction must be in (0, 1)")
    if not 0 <= unusual_fraction < 1:
        raise ValueError("unusual_fraction must be in [0, 1)")
    rng = random.Random(f"{seed}-{TASK}")
    tickets: list[ReplyTicket] = []
    seen_messages: set[str] = set()
    seen_ids: set[str] = set()
    while len(tickets) < requests:
        order_id = str(rng.randrange(10_000, 100_000))
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        kind = KINDS[len(tickets) % len(KINDS)] if rng.random() < 0.5 else rng.choice(KINDS)
        product = rng.choice(PRODUCTS)
        message = _message(kind, product, rng)
        if order_id in seen_ids or message in seen_messages:
            continue
        seen_ids.add(order_id)
        seen_messages.add(message)
        tickets.append(ReplyTicket(f"{first} {last}", order_id, message, product[0], kind))
    train_count = min(requests - 1, max(1, round(requests * train_fraction)))
    unusual = round((len(tickets) - train_count) * unusual_fraction)
    # a random generator of its own: the regular tickets stay the same whatever the unusual share
    place = random.Random(f"{seed}-{TASK}-unusual")
    for n, index in enumerate(sorted(place.sample(range(train_count, len(tickets)), unusual))):
        old = tickets[index]
        tickets[index] = unusual_ticket(UNUSUAL_KINDS[n % len(UNUSUAL_KINDS)], place, old.name, old.order_id)
    return ReplyWorkload(TASK, SYSTEM_PROMPT, tuple(tickets), train_count)


def reply_checks(answer: str | None, ticket: ReplyTicket) -> dict[str, bool]:
    """Which of the system prompt's checkable rules a reply follows (for information: parity is measured
    against the teacher's answers, whatever they are)."""
    text = (answer or "").strip()
    return {"greets by first name (\"Dear <first name>\")": text.startswith(f"Dear {ticket.first_name}"),
            "repeats the order number": bool(ticket.order_id) and ticket.order_id in text,
            "names the product": ticket.product in text.casefold(),
            "signs off (\"Warm regards, Nora\")": "Warm regards, Nora" in text}
