# SPDX-License-Identifier: MIT
#
# The Artifact carries meta-migration's state script. mender-artifactimg writes it with the
# scripts in ${DEPLOY_DIR_IMAGE}/mender-state-scripts, which migration-mender-state-scripts
# deploys: make do_image_mender wait for that (the script's package would be empty, so it is not
# in IMAGE_INSTALL, and nothing of it goes into the root file system).
do_image_mender[depends] += "migration-mender-state-scripts:do_deploy"
