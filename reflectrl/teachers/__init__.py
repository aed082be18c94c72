"""Teachers write the reflections of the SFT data from privileged environment facts."""

from reflectrl.teachers.base import Mistake, ReflectionRequest, Teacher
from reflectrl.teachers.offline import OfflineTeacher

__all__ = ["Mistake", "OfflineTeacher", "ReflectionRequest", "Teacher"]
