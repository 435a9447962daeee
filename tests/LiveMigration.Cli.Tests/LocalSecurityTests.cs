using System.Net;
using System.Text.Json;
using LiveMigration.Cli.Local;
using LiveMigration.Demo.Cluster;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Processes;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Hosting;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// What <c>lsm local up</c> protects by default, checked on a running local cluster as an operator uses it: the API
/// token is in a 0600 file and on no process's command line while lsm still finds it; a domain path that escapes the
/// allowed roots (with .. or through a symlink) is refused and makes nothing; the disks and metadata a VM create and
/// two migrations leave are 0660 in 0750 folders of QEMU's group, and QEMU runs as an unprivileged account whose
/// sockets sit in a 0700 folder of its own; the nodes talk mutual TLS with certificates from the cluster's own CA
/// (DATA/tls, 0700, files 0600); the viewer's
/// token reads and changes nothing, and the audit trail shows who tried what.
/// </summary>
[Collection(LocalClusters.Name)]
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class LocalSecurityTests : IAsyncLifetime
{
    private readonly LocalClusterSession _cluster = new();

    public Task InitializeAsync() => Task.CompletedTask;
    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    [Fact]
    public async Task The_token_stays_off_command_lines_the_nodes_talk_mutual_TLS_escaping_paths_make_nothing_and_disks_are_closed_to_other_users()
    {
        await _cluster.UpAsync();
        var state = (await LocalClusterState.ReadAsync(_cluster.DataDirectory))!;

        // the token: a 0600 file under the data directory, on no command line of any process, yet lsm finds it
        var tokenFile = Assert.IsType<string>(state.ApiTokenFile);
        Assert.Equal(Path.Combine(_cluster.DataDirectory, ApiTokenFile.FileName), tokenFile);
        Assert.Equal(ApiTokenFile.Mode, File.GetUnixFileMode(tokenFile));
        var token = ApiTokenFile.Read(tokenFile);
        var commandLines = Directory.EnumerateDirectories("/proc").Where(d => int.TryParse(Path.GetFileName(d), out _))
            .Select(d => (Pid: int.Parse(Path.GetFileName(d)), Arguments: ProcessTable.CommandLine(int.Parse(Path.GetFileName(d))))).ToList();
        foreach (var node in state.Nodes)
            Assert.Contains(commandLines, p => p.Pid == node.Pid && p.Arguments.Count > 0);
        var viewerToken = ApiTokenFile.Read(Path.Combine(_cluster.DataDirectory, ApiTokenFile.ViewerFileName));
        foreach (var (pid, arguments) in commandLines)
        {
            Assert.False(string.Join(' ', arguments).Contains(token), $"pid {pid}'s command line holds the API token: {string.Join(' ', arguments)}");
            Assert.False(string.Join(' ', arguments).Contains(viewerToken), $"pid {pid}'s command line holds the viewer token: {string.Join(' ', arguments)}");
        }
        var coordinator = state.Nodes.Single(n => n.Name == "coordinator");
        Assert.Contains("--api-token-file", ProcessTable.CommandLine(coordinator.Pid));
        Assert.Contains("--viewer-token-file", ProcessTable.CommandLine(coordinator.Pid));
        using (var anonymous = new HttpClient())
            Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.GetAsync($"{_cluster.Api}/api/cluster")).StatusCode);
        await _cluster.Ok("cluster", "show");

        // mutual TLS: the CA and one certificate and key per node under DATA/tls (0700, every file 0600), every node
        // started with its own, the members known by akka.ssl.tcp addresses, and no node warning of plain remoting
        var tls = Path.Combine(_cluster.DataDirectory, "tls");
        Assert.Equal(tls, state.TlsFolder);
        Assert.Equal(ClusterCertificates.FolderMode, File.GetUnixFileMode(tls));
        Assert.Equal(["ca.crt", "ca.key", "coordinator.crt", "coordinator.key", "host-1.crt", "host-1.key", "host-2.crt", "host-2.key"],
            Directory.EnumerateFiles(tls).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        foreach (var file in Directory.EnumerateFiles(tls))
            Assert.True(File.GetUnixFileMode(file) == ClusterCertificates.FileMode, $"{file} is {Convert.ToString((int)File.GetUnixFileMode(file), 8)}");
        foreach (var node in state.Nodes)
        {
            var arguments = ProcessTable.CommandLine(node.Pid).ToList();
            Assert.Equal(Path.Combine(tls, $"{node.Name}.crt"), arguments[arguments.IndexOf("--tls-certificate") + 1]);
            Assert.Equal(Path.Combine(tls, "ca.crt"), arguments[arguments.IndexOf("--tls-ca") + 1]);
            Assert.DoesNotContain("is unauthenticated", File.ReadAllText(node.LogFile));
        }
        var members = (await _cluster.Json("cluster", "show")).GetProperty("members").EnumerateArray().ToList();
        Assert.Equal(3, members.Count(m => m.GetProperty("status").GetString() == "up"));
        Assert.All(members, m => Assert.StartsWith("akka.ssl.tcp://lsm@127.0.0.1:", m.GetProperty("address").GetString()));

        // paths out of the allowed roots (DATA/domains, DATA/storage): refused with exit 2, nothing made anywhere
        var outside = Path.Combine(_cluster.DataDirectory, "outside");
        var elsewhere = Path.Combine(_cluster.DataDirectory, "elsewhere");
        Directory.CreateDirectory(elsewhere);
        var link = Path.Combine(_cluster.Storage, "link");
        Directory.CreateSymbolicLink(link, elsewhere);
        foreach (var escape in new[] { Path.Combine(_cluster.Storage, "..", "outside"), Path.Combine(link, "sd"), link, "/etc/lsm-test" })
        {
            var refused = await _cluster.Lsm("domain", "create", "escaped", "--path", escape, "--capacity", "256MiB");
            Assert.True(refused.ExitCode == 2, $"{escape}: {refused}");
            Assert.Contains("PATH_NOT_ALLOWED", refused.Stderr);
        }
        Assert.False(Directory.Exists(outside));
        Assert.False(Directory.Exists("/etc/lsm-test"));
        Assert.Empty(Directory.EnumerateFileSystemEntries(elsewhere));
        Assert.Equal(["link"], Directory.EnumerateFileSystemEntries(_cluster.Storage).Select(Path.GetFileName));
        Assert.Equal(0, (await _cluster.Json("domains")).GetProperty("domains").GetArrayLength());

        // an allowed path works; a VM created and moved there and back leaves only closed files
        await CreateDomainsAndVmAsync();
        await TheViewerReadsAndTheAuditShowsWhoTriedWhatAsync();
        await _cluster.Ok("migrate", "vm1", "--to", "sdB", "--wait");
        await _cluster.Ok("migrate", "vm1", "--to", "sdA", "--strategy", "post-copy", "--wait");
        await DeletedImageFolders.AwaitUnlinkedAsync(TimeSpan.FromSeconds(30), _cluster.Storage); // a folder still there then is a leftover
        var domainFolders = Directory.EnumerateDirectories(_cluster.Storage).Where(d => d != link).ToList();
        Assert.Equal(2, domainFolders.Count);
        foreach (var folder in domainFolders) AssertClosedModes(folder);
        Assert.Contains(Directory.EnumerateFiles(_cluster.Storage, "*.meta", SearchOption.AllDirectories), f => !f.StartsWith(link));

        // QEMU runs as the unprivileged account local up made, with no capabilities and only its own group; its monitor
        // and NBD sockets sit in a 0700 folder of that account under /run/lsm, and the host's run directory stays 0700
        var qemu = QemuAccount.Find(LocalQemuAccount.Name);
        var run = Path.Combine(_cluster.DataDirectory, "host-1", "run");
        Assert.Equal(SocketMode, File.GetUnixFileMode(run));
        var sockets = SocketDirectory.For(run, qemu);
        Assert.Equal(SocketMode, File.GetUnixFileMode(sockets));
        Assert.Equal(qemu.Uid.ToString(), (await ProcessRunner.RunAsync("stat", ["-c", "%u", sockets])).StandardOutput.Trim());
        Assert.Contains(Directory.EnumerateFileSystemEntries(sockets), s => s.EndsWith(".qmp", StringComparison.Ordinal));
        var vmPid = Assert.Single(commandLinesNow(), p => p.Arguments is [var program, ..] && program.EndsWith("qemu-system-x86_64")
                                                          && string.Join(' ', p.Arguments).Contains(sockets)).Pid;
        var status = File.ReadAllLines($"/proc/{vmPid}/status").ToDictionary(l => l.Split(':')[0], l => l.Split(':', 2)[1].Trim());
        Assert.All(status["Uid"].Split('\t'), uid => Assert.Equal(qemu.Uid.ToString(), uid));
        Assert.All(status["Gid"].Split('\t'), gid => Assert.Equal(qemu.Gid.ToString(), gid));
        Assert.Equal("0000000000000000", status["CapEff"]);
        foreach (var folder in domainFolders)
            Assert.All(Directory.EnumerateFileSystemEntries(folder, "*", SearchOption.AllDirectories).Prepend(folder),
                entry => Assert.Equal(qemu.Gid.ToString(), ProcessRunner.RunAsync("stat", ["-c", "%g", entry]).GetAwaiter().GetResult().StandardOutput.Trim()));

        // local down finds and stops that QEMU too, though it runs as another user and wrote its pid file elsewhere
        var down = await LocalClusterLauncher.DownAsync(_cluster.DataDirectory);
        Assert.Contains(vmPid, down.StoppedVmPids);
        Assert.False(ProcessTable.IsListed(vmPid), $"QEMU pid {vmPid} still runs after local down");
        // …and removes the socket folder it left under /run/lsm: nothing of the cluster stays outside its data directory
        Assert.False(Directory.Exists(sockets), $"{sockets} is left after local down");

        static List<(int Pid, IReadOnlyList<string> Arguments)> commandLinesNow() =>
            Directory.EnumerateDirectories("/proc").Where(d => int.TryParse(Path.GetFileName(d), out _))
                .Select(d => (int.Parse(Path.GetFileName(d)), ProcessTable.CommandLine(int.Parse(Path.GetFileName(d))))).ToList();
    }

    /// <summary>
    /// The viewer's token (DATA/viewer-token, 0600) reads and changes nothing, and lsm says why; the audit trail (operator
    /// only) lists the viewer's refused attempt, the escaping domain paths refused and the domain created, with outcomes.
    /// </summary>
    private async Task TheViewerReadsAndTheAuditShowsWhoTriedWhatAsync()
    {
        var viewerFile = Path.Combine(_cluster.DataDirectory, ApiTokenFile.ViewerFileName);
        Assert.Equal(ApiTokenFile.Mode, File.GetUnixFileMode(viewerFile));
        var reads = await _cluster.Lsm("vms", "--token-file", viewerFile);
        Assert.True(reads.ExitCode == 0, reads.ToString());
        Assert.Contains("vm1", reads.Stdout);
        foreach (var change in new[] { new[] { "vm", "stop", "vm1" }, ["audit"] })
        {
            var refused = await _cluster.Lsm([.. change, "--token-file", viewerFile]);
            Assert.True(refused.ExitCode == 2, refused.ToString());
            Assert.Contains("this token is a viewer token", refused.Stderr);
            Assert.Contains("needs the operator token", refused.Stderr);
        }
        Assert.Contains("running", (await _cluster.Ok("vm", "show", "vm1")).Stdout);

        var entries = (await _cluster.Json("audit")).GetProperty("entries").EnumerateArray()
            .Select(e => (Role: e.GetProperty("role").GetString(), Client: e.GetProperty("client").GetString(), Method: e.GetProperty("method").GetString(),
                Path: e.GetProperty("path").GetString()!, Body: e.GetProperty("body").GetString()!, Status: e.GetProperty("status").GetInt32(),
                Error: e.GetProperty("errorCode").GetString()))
            .ToList();
        // newest first: the viewer's stop, refused before it reached the VM (the audit itself is a read: not listed)
        Assert.Equal(("viewer", "POST", 403, "FORBIDDEN"), (entries[0].Role, entries[0].Method, entries[0].Status, entries[0].Error));
        Assert.EndsWith("/stop", entries[0].Path);
        Assert.Equal(4, entries.Count(e => e is { Path: "/api/domains", Status: 400, Error: "PATH_NOT_ALLOWED", Role: "operator" }));
        Assert.Contains(entries, e => e is { Path: "/api/domains", Status: 201, Error: null } && e.Body.Contains("\"sdA\""));
        Assert.Contains(entries, e => e is { Path: "/api/vms", Status: 201 } && e.Body.Contains("\"vm1\""));
        Assert.All(entries, e => Assert.Equal("127.0.0.1", e.Client));

        var table = (await _cluster.Ok("audit", "--limit", "3")).Stdout;
        Assert.Contains("403 FORBIDDEN", table);
        Assert.Contains("viewer", table);
        Assert.Contains("older entries: lsm audit --before", table);
    }

    private const UnixFileMode SocketMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    private async Task CreateDomainsAndVmAsync()
    {
        await _cluster.Ok("domain", "create", "sdA", "--path", _cluster.Storage, "--capacity", "1GiB");
        await _cluster.Ok("domain", "create", "sdB", "--path", Path.Combine(_cluster.Storage, "sub", "..", "."), "--capacity", "1GiB");
        await _cluster.Ok("vm", "create", "vm1", "--host", "host-1", "--disk", "64MiB@sdA:snapshots=1");
    }

    /// <summary>
    /// Every folder 2750 (0750, and the set-group-id bit that passes QEMU's group on) and every file 0660 in a domain's
    /// folder (and the folder itself).
    /// </summary>
    private static void AssertClosedModes(string folder)
    {
        const UnixFileMode closedFolder = StorageModes.Folder | UnixFileMode.SetGroup;
        Assert.Equal(closedFolder, File.GetUnixFileMode(folder));
        foreach (var entry in Directory.EnumerateFileSystemEntries(folder, "*", SearchOption.AllDirectories))
        {
            var expected = Directory.Exists(entry) ? closedFolder : StorageModes.File;
            var mode = File.GetUnixFileMode(entry);
            Assert.True(expected == mode, $"{entry} is {Convert.ToString((int)mode, 8)}, expected {Convert.ToString((int)expected, 8)}");
        }
    }
}
