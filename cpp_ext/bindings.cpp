// pybind11 bindings: exposes the C++ core as hean._core.
#include <pybind11/pybind11.h>

#include "engine.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "HEAN C++ trading core";

  py::enum_<hean::EngineState>(m, "EngineState")
      .value("STOPPED", hean::EngineState::Stopped)
      .value("RUNNING", hean::EngineState::Running);

  py::class_<hean::Engine>(m, "Engine")
      .def(py::init<>())
      .def("start", &hean::Engine::start, py::call_guard<py::gil_scoped_release>(),
           "Move to RUNNING; returns False if already running.")
      .def("stop", &hean::Engine::stop, py::call_guard<py::gil_scoped_release>(),
           "Move to STOPPED; returns False if already stopped.")
      .def_property_readonly("state", &hean::Engine::state)
      .def_property_readonly("command_count", &hean::Engine::command_count);
}
