"""The data, notebook 00: cameras and rays (`cameras`), the procedural objects and their
exact ray-cast renderer (`procedural`, `raycast`), real meshes from pybullet_data
(`pybullet_source`), and the SRN-layout reader/writer every dataset goes through (`srn`)."""
