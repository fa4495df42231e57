"""A procedural video world: scenes, renderer, prompts and a detector that reads clips back.

It gives the embedded text-to-video models unlimited, exactly labelled
training clips and an exact quality score: render a scene, prompt a model
with its description, and `check` the detector's reading of the output
against the scene. Rendering and detection use numpy only.

    from models.world import check, detect, make_prompt, render_clip, scene_for_seed

    scene = scene_for_seed(7)
    clip = render_clip(scene, frames=32, height=64, width=64)   # [32, 64, 64, 3] uint8
    check(scene, detect(clip))   # {"background": True, "colour": True, ...}
"""

from models.world.detect import DetectedObject, Detection, check, detect
from models.world.palette import BACKGROUND_RGB, OBJECT_RGB
from models.world.prompts import EvalPrompt, heldout_prompts, make_prompt
from models.world.render import WorldStream, render_clip
from models.world.scene import Scene, SceneObject, sample_scene, scene_for_seed, trajectory

__all__ = [
    "BACKGROUND_RGB",
    "OBJECT_RGB",
    "DetectedObject",
    "Detection",
    "EvalPrompt",
    "Scene",
    "SceneObject",
    "WorldStream",
    "check",
    "detect",
    "heldout_prompts",
    "make_prompt",
    "render_clip",
    "sample_scene",
    "scene_for_seed",
    "trajectory",
]
