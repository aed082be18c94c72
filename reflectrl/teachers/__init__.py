"""Teachers write the reflections of the SFT data from privileged environment facts."""

from reflectrl.teachers.base import Mistake, ReflectionRequest, Teacher, TeacherError
from reflectrl.teachers.offline import OfflineTeacher
from reflectrl.teachers.openai_teacher import OpenAITeacher

__all__ = ["Mistake", "OfflineTeacher", "OpenAITeacher", "ReflectionRequest", "Teacher", "TeacherError"]
