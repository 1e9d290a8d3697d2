"""What one running gateway holds; lives on `app.state.protege`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.admin_auth import SignInThrottle
from gateway.auth import KeyRing
from gateway.capture import CaptureWriter
from gateway.chat.service import ChatService
from gateway.config import Settings
from gateway.feedback import FeedbackDesk
from gateway.metrics import Metrics
from gateway.ramp import RampController
from gateway.store import Store


@dataclass(slots=True)
class GatewayState:
    settings: Settings
    store: Store
    metrics: Metrics
    capture: CaptureWriter
    keys: KeyRing
    service: ChatService
    feedback: FeedbackDesk
    ramps: RampController | None = None  # moves rollout ramps (with a student server)
    started_at: float = field(default_factory=time.time)
    sign_ins: SignInThrottle = field(default_factory=SignInThrottle)
