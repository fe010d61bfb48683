"""Raw tables of the skeleton conventions: joint names, graph edges, center, unit, dims.

`conventions.py` turns these into `Convention` objects (parents, flip, checks). Two ways
to write edges:

- `edges_1based`: the four conventions wired into the official MS-CLR code keep the
  spec's (section 3) 1-based pair list verbatim, so it can be compared with the source
  character by character.
- `chains`: the other conventions are written as joint-name chains read from the
  center outwards, e.g. "neck-lsho-lelb" = links neck->lsho, lsho->lelb. Each link is
  stored as the 0-based (child, parent) pair (lsho, neck), (lelb, lsho).

Units: MeTRAbs outputs millimetres ("mm"); the Kinect ground truth and MediaPipe world
landmarks are metres ("m"); 2D detectors (OpenPose) give image pixels ("px", dims=2).
"""

from __future__ import annotations

TABLES: dict[str, dict] = {}

# --- the four conventions of the official code (spec section 3, edges verbatim) --------

# NTU RGB+D Kinect v2 ground truth. Names as in the NTU README. The ST-GCN graph links
# hand-tip -> thumb -> hand, not Kinect's tip -> hand (kept: it is what the paper used).
TABLES["ntu-rgb+d"] = dict(
    joints="""spine-base spine-mid neck head L-shoulder L-elbow L-wrist L-hand
              R-shoulder R-elbow R-wrist R-hand L-hip L-knee L-ankle L-foot
              R-hip R-knee R-ankle R-foot spine-shoulder L-hand-tip L-thumb
              R-hand-tip R-thumb""",
    edges_1based="""(1,2)(2,21)(3,21)(4,3)(5,21)(6,5)(7,6)(8,7)(9,21)(10,9)(11,10)(12,11)
                    (13,1)(14,13)(15,14)(16,15)(17,1)(18,17)(19,18)(20,19)(22,23)(23,8)
                    (24,25)(25,12)""",
    center="spine-shoulder",
    unit="m",
    source="NTU RGB+D (Kinect v2 ground truth); edges from ST-GCN/AimCLR graph.py",
)

TABLES["smpl_24"] = dict(
    joints="""pelv lhip rhip spi1 lkne rkne spi2 lank rank spi3 ltoe rtoe
              neck lcla rcla head lsho rsho lelb relb lwri rwri lhan rhan""",
    edges_1based="""(1,4)(4,7)(7,10)(13,10)(16,13)(2,1)(5,2)(8,5)(11,8)(3,1)(6,3)(9,6)
                    (12,9)(14,10)(17,14)(19,17)(21,19)(23,21)(15,10)(18,15)(20,18)
                    (22,20)(24,22)""",
    center="spi3",
    unit="mm",
    source="MeTRAbs smpl_24; edges from the MS-CLR development fork graph.py",
)

# SMPL-X joints 0..24, 28, 43, 55..66, 68, 71, 73 (posepile "huge8" selection). The two
# eye joints leyehf/reyehf appear in no edge: they are isolated (their own roots).
TABLES["smplx_42"] = dict(
    joints="""pelv lhip rhip bell lkne rkne spin lank rank thor ltoe rtoe
              neck lcla rcla head lsho rsho lelb relb lwri rwri jaw leyehf
              reyehf lmiddle1 rmiddle1 nose reye leye rear lear lto2 lto3 lhee
              rto2 rto3 rhee lthu lmiddle rthu rmiddle""",
    edges_1based="""(7,10)(4,7)(1,4)(2,1)(5,2)(8,5)(35,8)(11,8)(33,11)(34,11)(3,1)(6,3)
                    (9,6)(38,9)(12,9)(36,12)(37,12)(14,10)(17,14)(19,17)(21,19)(26,21)
                    (39,21)(40,21)(15,10)(18,15)(20,18)(22,20)(27,22)(41,22)(42,22)
                    (13,10)(23,13)(16,23)(28,16)(30,28)(32,30)(29,28)(31,29)""",
    center="thor",
    unit="mm",
    source="MeTRAbs smplx_42 (order reconstructed from posepile); edges from the dev fork",
)

# Marker-based skeleton with three graph components (head / shoulders+arms /
# torso+legs). The official edges are unordered (lower, higher) pairs: the parent
# array is derived from them, never read off the pair order.
TABLES["berkeley_mhad_43"] = dict(
    joints="""head lhead rhead rback backl backt lback lside bell chest rside
              lsho1 lsho2 larm lelb lwri lhan1 lhan2 lhan3
              rsho1 rsho2 rarm relb rwri rhan1 rhan2 rhan3
              lhipb lhipf lhipl lleg lkne lank lhee lfoo
              rhipb rhipf rhipl rleg rkne rank rhee rfoo""",
    edges_1based="""(1,2)(1,3)(4,5)(4,36)(5,6)(5,7)(7,28)(8,9)(8,29)(9,10)(9,11)(11,37)
                    (12,13)(12,20)(13,14)(14,15)(15,16)(16,17)(16,18)(16,19)(20,21)
                    (21,22)(22,23)(23,24)(24,25)(24,26)(24,27)(28,30)(28,36)(29,30)
                    (29,31)(31,32)(32,33)(33,34)(34,35)(36,38)(37,38)(37,39)(39,40)
                    (40,41)(41,42)(42,43)""",
    center="bell",
    unit="mm",
    source="MeTRAbs berkeley_mhad_43 (order from posepile); edges from the dev fork",
)

# --- further conventions (edges written here as chains from the center outwards) ------

TABLES["h36m_17"] = dict(
    joints="""pelv rhip rkne rank lhip lkne lank spin neck head htop
              lsho lelb lwri rsho relb rwri""",
    # h36m "neck" is the thorax: the analogue of NTU's spine-shoulder center.
    chains="""neck-head-htop  neck-spin-pelv  pelv-lhip-lkne-lank  pelv-rhip-rkne-rank
              neck-lsho-lelb-lwri  neck-rsho-relb-rwri""",
    center="neck",
    unit="mm",
    source="MeTRAbs h36m_17 (Human3.6M 17-joint subset)",
)

# The 17 COCO body keypoints, treated as 3D MeTRAbs-style output (mm). COCO has no mid
# torso joint; the graph is pyskl's "coco" ST-GCN layout (a tree centred on the nose).
TABLES["coco_17"] = dict(
    joints="""nose left_eye right_eye left_ear right_ear left_shoulder right_shoulder
              left_elbow right_elbow left_wrist right_wrist left_hip right_hip
              left_knee right_knee left_ankle right_ankle""",
    chains="""nose-left_eye-left_ear  nose-right_eye-right_ear
              nose-left_shoulder-left_elbow-left_wrist  nose-right_shoulder-right_elbow-right_wrist
              left_shoulder-left_hip-left_knee-left_ankle
              right_shoulder-right_hip-right_knee-right_ankle""",
    center="nose",
    unit="mm",
    source="COCO keypoints (3D, MeTRAbs-style); graph as pyskl's coco layout",
)

TABLES["mpi_inf_3dhp_28"] = dict(
    joints="""thor spi4 spi2 spin pelv neck head htop lcla lsho lelb lwri lhan
              rcla rsho relb rwri rhan lhip lkne lank lfoo ltoe
              rhip rkne rank rfoo rtoe""",
    chains="""thor-spi4-neck-head-htop  thor-spi2-spin-pelv
              neck-lcla-lsho-lelb-lwri-lhan  neck-rcla-rsho-relb-rwri-rhan
              pelv-lhip-lkne-lank-lfoo-ltoe  pelv-rhip-rkne-rank-rfoo-rtoe""",
    center="thor",
    unit="mm",
    source="MeTRAbs mpi_inf_3dhp_28",
)

# MediaPipe Pose world landmarks (metres, hip-centred). POSE_CONNECTIONS has cycles and
# leaves face and mouth unconnected to the body; this tree drops the cycle-closing links
# (shoulder-shoulder, hip-hip, pinky-index, heel-foot_index, mouth-mouth) and, like the
# COCO layout, hangs the mouth and the shoulders on the nose.
TABLES["mediapipe_33"] = dict(
    joints="""nose left_eye_inner left_eye left_eye_outer right_eye_inner right_eye
              right_eye_outer left_ear right_ear mouth_left mouth_right
              left_shoulder right_shoulder left_elbow right_elbow left_wrist right_wrist
              left_pinky right_pinky left_index right_index left_thumb right_thumb
              left_hip right_hip left_knee right_knee left_ankle right_ankle
              left_heel right_heel left_foot_index right_foot_index""",
    chains="""nose-left_eye_inner-left_eye-left_eye_outer-left_ear
              nose-right_eye_inner-right_eye-right_eye_outer-right_ear
              nose-mouth_left  nose-mouth_right
              nose-left_shoulder-left_elbow-left_wrist-left_pinky  left_wrist-left_index
              left_wrist-left_thumb
              nose-right_shoulder-right_elbow-right_wrist-right_pinky  right_wrist-right_index
              right_wrist-right_thumb
              left_shoulder-left_hip-left_knee-left_ankle-left_heel  left_ankle-left_foot_index
              right_shoulder-right_hip-right_knee-right_ankle-right_heel
              right_ankle-right_foot_index""",
    center="nose",
    unit="m",
    source="MediaPipe Pose (33 world landmarks)",
)

# OpenPose BODY_25: 2D image coordinates in pixels. Edges = the BODY_25 limb pairs
# without the ear-shoulder PAF helpers (those are not bones).
TABLES["openpose_25"] = dict(
    joints="""Nose Neck RShoulder RElbow RWrist LShoulder LElbow LWrist MidHip
              RHip RKnee RAnkle LHip LKnee LAnkle REye LEye REar LEar
              LBigToe LSmallToe LHeel RBigToe RSmallToe RHeel""",
    chains="""Neck-Nose-REye-REar  Nose-LEye-LEar  Neck-RShoulder-RElbow-RWrist
              Neck-LShoulder-LElbow-LWrist  Neck-MidHip-RHip-RKnee-RAnkle-RBigToe-RSmallToe
              RAnkle-RHeel  MidHip-LHip-LKnee-LAnkle-LBigToe-LSmallToe  LAnkle-LHeel""",
    center="Neck",
    unit="px",
    dims=2,
    source="OpenPose BODY_25 (2D)",
)

# Kinect v2 joints under MeTRAbs naming, in Kinect order. Warning (spec section 3):
# posepile labels raw NTU joint 5 as "rsho", so kinectv2_25 may be left/right mirrored
# against ntu-rgb+d at the same index. Do not mix the two by index without checking.
TABLES["kinectv2_25"] = dict(
    joints="""spinebase spinemid neck head lsho lelb lwri lhan rsho relb rwri rhan
              lhip lkne lank lfoo rhip rkne rank rfoo spineshoulder lhandtip lthu
              rhandtip rthu""",
    # Kinect SDK bone tree: the thumb hangs on the wrist, the hand tip on the hand.
    chains="""spineshoulder-neck-head  spineshoulder-spinemid-spinebase
              spinebase-lhip-lkne-lank-lfoo  spinebase-rhip-rkne-rank-rfoo
              spineshoulder-lsho-lelb-lwri-lhan-lhandtip  lwri-lthu
              spineshoulder-rsho-relb-rwri-rhan-rhandtip  rwri-rthu""",
    center="spineshoulder",
    unit="mm",
    source="MeTRAbs kinectv2_25",
)
