"""The shipped example plugins (``plugins/``) and plugin discovery through configuration.

The example modules are loaded the way the gateway loads them: a
configuration whose plugin folder is the repository's ``plugins/`` (the
default for ``etc/gateway.yaml``), then routes naming them like built-ins.
Failure cases use plugin folders written under the test's temporary
directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

from pydicom.dataset import Dataset
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.errors import ConfigErrors
from gateway.config.load import load_config_text
from gateway.config.schema import GatewayConfig
from gateway.morph import MorphError
from gateway.route import RoutingContext

#: The repository root.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The shipped plugin folder.
PLUGINS = os.path.join(REPO_ROOT, "plugins")

CONTEXT = RoutingContext("CT1", "DICOMGW", "127.0.0.1", "dicom", 11112)


def config_text(routes: str, folders: list[str]) -> str:
    """A minimal configuration with one folder destination, the given plugin folders and routes.

    :param routes: the YAML of the ``routes`` list, indented by two spaces.
    :param folders: the plugin folders (absolute).
    :returns: the YAML text.
    """
    folder_list = ", ".join(f'"{f}"' for f in folders)
    return (
        "ae_title: DICOMGW\n"
        "listen: [{host: 127.0.0.1, port: 0}]\n"
        "spool: spool\n"
        "destinations:\n"
        "  archive: {folder: archive}\n"
        f"plugins: {{folders: [{folder_list}]}}\n"
        "routes:\n" + routes
    )


def load(routes: str, folders: list[str], base_dir: str) -> GatewayConfig:
    """Load :func:`config_text` from ``base_dir``.

    :param routes: the routes YAML.
    :param folders: the plugin folders.
    :param base_dir: where relative paths resolve.
    :returns: the configuration.
    """
    return load_config_text(config_text(routes, folders), "gateway.yaml", base_dir)


def errors_of(routes: str, folders: list[str], base_dir: str) -> list[str]:
    """The rendered configuration errors of loading ``routes`` (fails if it loads).

    :param routes: the routes YAML.
    :param folders: the plugin folders.
    :param base_dir: where relative paths resolve.
    :returns: one string per error.
    """
    try:
        load(routes, folders, base_dir)
    except ConfigErrors as e:
        return [str(error) for error in e.errors]
    raise AssertionError("the configuration loaded")


def header(**elements: str) -> Dataset:
    """A small header with the given elements.

    :param elements: keyword -> value.
    :returns: the data set.
    """
    ds = Dataset()
    ds.Modality = "CT"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


class BodyPartPluginTests(SynchronousTestCase):
    """``{plugin: body_part, parts: [...]}`` from plugins/example_match.py."""

    def setUp(self) -> None:
        """Load a route using the plugin from the shipped folder."""
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        config = load(
            "  - name: heads\n"
            "    match: {plugin: body_part, parts: [HEAD, brain]}\n"
            "    forward: [archive]\n",
            [PLUGINS],
            self.base,
        )
        self.predicate = config.routes[0].match

    def test_matches_body_part_examined_ignoring_case(self) -> None:
        """BodyPartExamined 'head ' matches parts [HEAD, brain]."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns that 'head ' is not a valid CS
            ds = header(BodyPartExamined="head ")
        self.assertTrue(self.predicate.matches(ds, CONTEXT))

    def test_matches_a_whole_word_of_study_description(self) -> None:
        """'MR Brain w/o contrast' matches BRAIN; 'BRAINSTEM study' does not."""
        self.assertTrue(self.predicate.matches(header(StudyDescription="MR Brain w/o contrast"), CONTEXT))
        self.assertFalse(self.predicate.matches(header(StudyDescription="BRAINSTEM study"), CONTEXT))

    def test_other_body_parts_and_absent_elements_do_not_match(self) -> None:
        """CHEST, and a header with neither element, do not match."""
        self.assertFalse(self.predicate.matches(header(BodyPartExamined="CHEST"), CONTEXT))
        self.assertFalse(self.predicate.matches(header(), CONTEXT))

    def test_description_false_looks_at_body_part_only(self) -> None:
        """With description: false the Study Description is ignored."""
        config = load(
            "  - name: heads\n"
            "    match: {plugin: body_part, parts: [HEAD], description: false}\n"
            "    forward: [archive]\n",
            [PLUGINS],
            self.base,
        )
        predicate = config.routes[0].match
        self.assertFalse(predicate.matches(header(StudyDescription="CT HEAD"), CONTEXT))
        self.assertTrue(predicate.matches(header(BodyPartExamined="HEAD"), CONTEXT))

    def test_describes_itself_for_check(self) -> None:
        """describe() names the plugin and its parts."""
        self.assertEqual(
            self.predicate.describe(),
            "plugin body_part: body part is HEAD or BRAIN (or named in StudyDescription)",
        )

    def test_combines_with_built_in_conditions(self) -> None:
        """Inside all: with Modality, both must hold."""
        config = load(
            "  - name: ct-heads\n"
            "    match:\n"
            "      all:\n"
            "        - Modality: CT\n"
            "        - {plugin: body_part, parts: [HEAD]}\n"
            "    forward: [archive]\n",
            [PLUGINS],
            self.base,
        )
        predicate = config.routes[0].match
        self.assertTrue(predicate.matches(header(BodyPartExamined="HEAD"), CONTEXT))
        mr = header(BodyPartExamined="HEAD")
        mr.Modality = "MR"
        self.assertFalse(predicate.matches(mr, CONTEXT))

    def test_bad_arguments_are_config_errors_naming_the_line(self) -> None:
        """An empty parts list and a misspelt argument are errors at the plugin key's line."""
        errors = errors_of(
            "  - name: a\n"
            "    match: {plugin: body_part, parts: []}\n"
            "    forward: [archive]\n"
            "  - name: b\n"
            "    match: {plugin: body_part, part: [HEAD]}\n"
            "    forward: [archive]\n",
            [PLUGINS],
            self.base,
        )
        self.assertEqual(len(errors), 2, errors)
        self.assertIn("gateway.yaml:9: routes[0].match.plugin: plugin body_part: 'parts' must be", errors[0])
        self.assertIn("gateway.yaml:12: routes[1].match.plugin: plugin body_part: unknown argument 'part'",
                      errors[1])


class PrefixAccessionPluginTests(SynchronousTestCase):
    """``{plugin: prefix_accession, prefix: ...}`` from plugins/example_morph.py."""

    def setUp(self) -> None:
        """Load a route using the plugin from the shipped folder."""
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)

    def plan(self, arguments: str) -> object:
        """Compile a route whose morph is the plugin with ``arguments``.

        :param arguments: the YAML flow mapping's other keys.
        :returns: the route's morph plan.
        """
        config = load(
            "  - name: outside\n"
            "    morph:\n"
            f"      - {{plugin: prefix_accession, {arguments}}}\n"
            "    forward: [archive]\n",
            [PLUGINS],
            self.base,
        )
        return config.routes[0].morph

    def test_prefixes_the_accession_number_and_reports_the_change(self) -> None:
        """'A123' becomes 'EXT-A123', and the change old -> new is returned."""
        ds = header(AccessionNumber="A123")
        changes = self.plan('prefix: "EXT-"').apply(ds, CONTEXT)
        self.assertEqual(ds.AccessionNumber, "EXT-A123")
        self.assertEqual([(c.path, c.old, c.new) for c in changes], [("AccessionNumber", "A123", "EXT-A123")])

    def test_is_idempotent(self) -> None:
        """A value already carrying the prefix is left alone, with no change reported."""
        ds = header(AccessionNumber="EXT-A123")
        self.assertEqual(self.plan('prefix: "EXT-"').apply(ds, CONTEXT), [])
        self.assertEqual(ds.AccessionNumber, "EXT-A123")

    def test_empty_values_are_skipped_or_prefixed_as_configured(self) -> None:
        """An absent AccessionNumber stays absent by default; with empty: prefix it becomes the prefix."""
        ds = header()
        self.assertEqual(self.plan('prefix: "EXT-"').apply(ds, CONTEXT), [])
        self.assertNotIn("AccessionNumber", ds)
        self.plan('prefix: "EXT-", empty: prefix').apply(ds, CONTEXT)
        self.assertEqual(ds.AccessionNumber, "EXT-")

    def test_a_result_too_long_for_sh_is_a_morph_error(self) -> None:
        """A 14-character accession number prefixed with 'EXT-' exceeds SH's 16 and raises MorphError."""
        ds = header(AccessionNumber="12345678901234")
        with self.assertRaises(MorphError) as caught:
            self.plan('prefix: "EXT-"').apply(ds, CONTEXT)
        self.assertIn("longer than 16", str(caught.exception))
        self.assertEqual(ds.AccessionNumber, "12345678901234")

    def test_a_prefix_that_never_fits_is_a_config_error(self) -> None:
        """A 17-character prefix is refused at load, naming the line and key."""
        errors = errors_of(
            "  - name: outside\n"
            "    morph:\n"
            '      - {plugin: prefix_accession, prefix: "ABCDEFGHIJKLMNOPQ"}\n'
            "    forward: [archive]\n",
            [PLUGINS],
            self.base,
        )
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("gateway.yaml:10: routes[0].morph[0].plugin: prefix_accession: 'prefix' can never", errors[0])


class DiscoveryTests(SynchronousTestCase):
    """Plugin folders: the default beside the configuration, failures, unknown names, dropin.cache."""

    def write_plugin(self, folder: str, name: str, source: str) -> str:
        """Write a plugin module.

        :param folder: the plugin folder (created).
        :param name: the module's file name.
        :param source: its Python source.
        :returns: the file's path.
        """
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(textwrap.dedent(source))
        return path

    def test_syntax_error_in_a_plugin_is_a_config_error_naming_the_file(self) -> None:
        """A plugin module that does not compile makes the configuration invalid, naming its path."""
        folder = os.path.abspath(self.mktemp())
        path = self.write_plugin(folder, "broken_rules_plugin.py", "def oops(:\n    pass\n")
        errors = errors_of(
            "  - name: all\n    forward: [archive]\n", [folder], os.path.dirname(folder)
        )
        # twisted.plugin also logs the module it cannot import; the
        # configuration error is what the operator is shown.
        self.flushLoggedErrors(SyntaxError)
        self.assertEqual(len(errors), 1, errors)
        self.assertIn(f"plugin {path} failed to load: SyntaxError", errors[0])
        self.assertTrue(errors[0].startswith("gateway.yaml:6: plugins: "), errors[0])

    def test_unknown_match_plugin_lists_the_plugins_found(self) -> None:
        """A misspelt match plugin name is an error with a suggestion and the list of plugins found."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        errors = errors_of(
            "  - name: a\n    match: {plugin: body_parts, parts: [HEAD]}\n    forward: [archive]\n",
            [PLUGINS],
            base,
        )
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("routes[0].match.plugin: unknown match plugin 'body_parts'", errors[0])
        self.assertIn("body_part", errors[0].split("plugins found:")[1])

    def test_unknown_morph_plugin_lists_the_plugins_found(self) -> None:
        """A misspelt morph plugin name is an error listing the morph plugins found."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        errors = errors_of(
            "  - name: a\n    morph: [{plugin: prefix_accesion, prefix: X}]\n    forward: [archive]\n",
            [PLUGINS],
            base,
        )
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("unknown morph plugin 'prefix_accesion' (known: ", errors[0])
        self.assertIn("prefix_accession", errors[0])

    def test_default_folder_is_plugins_beside_the_configuration_folder(self) -> None:
        """Without a plugins key, ../plugins relative to the configuration file is searched."""
        root = os.path.abspath(self.mktemp())
        self.write_plugin(
            os.path.join(root, "plugins"),
            "always_rules_plugin.py",
            '''
            from dataclasses import dataclass
            from twisted.plugin import IPlugin
            from zope.interface import implementer
            from gateway.interfaces import IMatchPredicate

            @dataclass(frozen=True)
            class Always:
                def matches(self, dataset, context):
                    return True
                def describe(self):
                    return "always"

            @implementer(IPlugin, IMatchPredicate)
            class AlwaysPlugin:
                name = "always_for_test"
                def compile(self, arguments):
                    return Always()

            always = AlwaysPlugin()
            ''',
        )
        os.makedirs(os.path.join(root, "etc"))
        text = (
            "ae_title: DICOMGW\nlisten: [{host: 127.0.0.1, port: 0}]\nspool: spool\n"
            "destinations: {archive: {folder: archive}}\n"
            "routes:\n  - {name: a, match: {plugin: always_for_test}, forward: [archive]}\n"
        )
        config = load_config_text(text, "gateway.yaml", os.path.join(root, "etc"))
        self.assertTrue(config.routes[0].match.matches(header(), CONTEXT))

    def test_plugins_of_a_previous_configuration_are_forgotten(self) -> None:
        """A folder that is no longer configured (e.g. after a reload) provides no plugin and no error."""
        from gateway.plugins import discover

        first = os.path.abspath(self.mktemp())
        self.write_plugin(first, "broken_other_plugin.py", "def oops(:\n")
        self.assertEqual(len(discover([first, PLUGINS]).errors), 1)
        self.flushLoggedErrors(SyntaxError)
        found = discover([PLUGINS])
        self.assertEqual(found.errors, [])
        self.assertEqual((sorted(found.match), sorted(found.morph)), (["body_part"], ["prefix_accession"]))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_dropin_cache_is_ignored_by_git(self) -> None:
        """Loading the shipped plugins may write plugins/dropin.cache, which git ignores."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        load("  - name: a\n    forward: [archive]\n", [PLUGINS], base)
        result = subprocess.run(
            ["git", "check-ignore", "-q", os.path.join("plugins", "dropin.cache")],
            cwd=REPO_ROOT, capture_output=True, check=False,
        )
        if result.returncode == 128:
            raise self.skipTest("not a git checkout")
        self.assertEqual(result.returncode, 0, "plugins/dropin.cache is not gitignored")

    def test_a_read_only_plugin_folder_still_loads(self) -> None:
        """When dropin.cache cannot be written (EACCES injected: tests run as root) the plugins are still found."""
        from twisted.python.filepath import FilePath

        real_set_content = FilePath.setContent

        def refuse_cache(path: FilePath, content: bytes, ext: bytes = b".new") -> None:
            if path.basename() == "dropin.cache":
                raise PermissionError(13, "Permission denied", path.path)
            real_set_content(path, content, ext)

        self.patch(FilePath, "setContent", refuse_cache)
        folder = os.path.abspath(self.mktemp())
        self.write_plugin(
            folder,
            "readonly_rules_plugin.py",
            '''
            from dataclasses import dataclass
            from twisted.plugin import IPlugin
            from zope.interface import implementer
            from gateway.interfaces import IMatchPredicate

            @dataclass(frozen=True)
            class Never:
                def matches(self, dataset, context):
                    return False
                def describe(self):
                    return "never"

            @implementer(IPlugin, IMatchPredicate)
            class NeverPlugin:
                name = "never_for_test"
                def compile(self, arguments):
                    return Never()

            never = NeverPlugin()
            ''',
        )
        config = load(
            "  - {name: a, match: {plugin: never_for_test}, forward: [archive]}\n",
            [folder],
            os.path.dirname(folder),
        )
        self.assertFalse(config.routes[0].match.matches(header(), CONTEXT))
        self.assertFalse(os.path.exists(os.path.join(folder, "dropin.cache")))


#: A match plugin module named ``name`` (its ``plugin:`` key), for the folder-safety tests.
ALWAYS_SOURCE = '''
from dataclasses import dataclass
from twisted.plugin import IPlugin
from zope.interface import implementer
from gateway.interfaces import IMatchPredicate

@dataclass(frozen=True)
class Always:
    def matches(self, dataset, context):
        return True
    def describe(self):
        return "always"

@implementer(IPlugin, IMatchPredicate)
class AlwaysPlugin:
    name = "{name}"
    def compile(self, arguments):
        return Always()

always = AlwaysPlugin()
'''


class PluginFolderSafetyTests(SynchronousTestCase):
    """Plugins come only from the configured folders, only when group and others cannot write them."""

    def folder(self, mode: int = 0o755, plugin: str = "safe_for_test", file_mode: int = 0o644) -> str:
        """A plugin folder holding one match plugin.

        :param mode: the folder's mode.
        :param plugin: the plugin's name (also its module's name).
        :param file_mode: the module's mode.
        :returns: the folder.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, f"{plugin}.py")
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(ALWAYS_SOURCE.replace("{name}", plugin))
        os.chmod(path, file_mode)
        os.chmod(folder, mode)
        return folder

    def test_group_writable_folder_is_refused_naming_it_and_its_mode(self) -> None:
        """A 0775 plugin folder is a configuration error naming the folder and 0775; its plugin is not loaded."""
        folder = self.folder(0o775, "groupw_for_test")
        errors = errors_of(
            "  - {name: a, match: {plugin: groupw_for_test}, forward: [archive]}\n", [folder], os.path.dirname(folder)
        )
        self.assertIn(f"plugin folder {folder} is writable by group or others (mode 0775)", errors[0])
        self.assertTrue(any("unknown match plugin 'groupw_for_test'" in e for e in errors), errors)

    def test_world_writable_folder_is_refused(self) -> None:
        """A sticky world-writable folder (1777, like /tmp) is refused too."""
        from gateway.plugins import discover

        folder = self.folder(0o1777, "worldw_for_test")
        found = discover([folder])
        self.assertEqual(found.match, {})
        self.assertEqual(found.errors, [f"plugin folder {folder} is writable by group or others (mode 1777); "
                                        f"plugins run inside the gateway, so it must not be (chmod go-w {folder})"])

    def test_group_writable_module_is_refused(self) -> None:
        """A 0664 module in a safe folder is refused by name and mode; the folder's other modules still load."""
        from gateway.plugins import discover

        folder = self.folder(0o755, "modw_for_test", file_mode=0o664)
        with open(os.path.join(folder, "fine_for_test.py"), "w", encoding="utf-8") as stream:
            stream.write(ALWAYS_SOURCE.replace("{name}", "fine_for_test"))
        found = discover([folder])
        self.assertEqual(sorted(found.match), ["fine_for_test"])
        self.assertEqual(len(found.errors), 1, found.errors)
        self.assertIn(f"plugin module {os.path.join(folder, 'modw_for_test.py')} is writable by group or others (mode 0664)",
                      found.errors[0])

    def test_nothing_is_written_into_the_plugin_folder(self) -> None:
        """Loading and using a folder's plugins writes no dropin.cache and no __pycache__ into it."""
        folder = self.folder(0o755, "quiet_for_test")
        before = sorted(os.listdir(folder))
        config = load("  - {name: a, match: {plugin: quiet_for_test}, forward: [archive]}\n", [folder],
                      os.path.dirname(folder))
        self.assertTrue(config.routes[0].match.matches(header(), CONTEXT))
        self.assertEqual(sorted(os.listdir(folder)), before)

    def test_identity_verifiers_come_from_the_configured_folders(self) -> None:
        """providers(IUserIdentityVerifier) lists the verifier plugins of the folders the last discovery loaded."""
        from gateway.identity_check import IUserIdentityVerifier
        from gateway.plugins import discover, providers

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "jwt_for_test.py"), "w", encoding="utf-8") as stream:
            stream.write(textwrap.dedent('''
                from twisted.plugin import IPlugin
                from zope.interface import implementer
                from gateway.identity_check import IUserIdentityVerifier

                @implementer(IPlugin, IUserIdentityVerifier)
                class Verifier:
                    name = "jwt_for_test"
                    def verify(self, identity):
                        return None

                verifier = Verifier()
            '''))
        self.assertEqual(sorted(discover([folder]).identity), ["jwt_for_test"])
        self.assertEqual([p.name for p in providers(IUserIdentityVerifier)], ["jwt_for_test"])
        discover([])
        self.assertEqual(providers(IUserIdentityVerifier), [])

    def test_a_plugin_in_the_working_directory_is_not_found(self) -> None:
        """A gateway/dropins/ module under the working directory (first on sys.path) provides no plugin."""
        cwd = os.path.abspath(self.mktemp())
        planted = os.path.join(cwd, "gateway", "dropins")
        os.makedirs(planted)
        with open(os.path.join(planted, "planted.py"), "w", encoding="utf-8") as stream:
            stream.write(ALWAYS_SOURCE.replace("{name}", "from_cwd"))
        etc = os.path.join(cwd, "etc")
        os.makedirs(etc)
        with open(os.path.join(etc, "gateway.yaml"), "w", encoding="utf-8") as stream:
            stream.write(config_text("  - {name: a, match: {plugin: from_cwd}, forward: [archive]}\n", []))
        script = (
            "from gateway.config.load import load_config\n"
            "from gateway.config.errors import ConfigErrors\n"
            "try:\n"
            "    load_config('etc/gateway.yaml')\n"
            "    print('LOADED')\n"
            "except ConfigErrors as e:\n"
            "    print(e)\n"
        )
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        result = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                                check=False, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("LOADED", result.stdout)
        self.assertIn("unknown match plugin 'from_cwd'", result.stdout)
