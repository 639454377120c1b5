"""semret_ros: open-vocabulary, language-queryable scene understanding for ROS 2.

The generated interfaces (``semret_ros.msg``, ``semret_ros.srv``) are installed by the
ament_cmake build into the same Python package.  When this source tree is imported directly
(tests, development), ``extend_path`` lets Python find those generated modules in the
installed copy as well.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
