using System.Text.Json;
using LiveMigration.Cli.Local;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// A local cluster started with <c>lsm local up</c> in a short data directory under /tmp (a VM's unix sockets live
/// below it), driven with <c>lsm</c> as an operator types it; its nodes and VMs are stopped by pid, and the directory
/// removed, when the test ends.
/// </summary>
public sealed class LocalClusterSession : IAsyncDisposable
{
    public string DataDirectory { get; } = Path.Combine("/tmp", $"lsm-{Guid.NewGuid().ToString("N")[..8]}");
    public string Api { get; private set; } = "";
    /// <summary>DATA/storage: where the tests create their domains (<c>lsm domain create --path</c>), allowed with <c>--storage-root</c>.</summary>
    public string Storage => Path.Combine(DataDirectory, "storage");
    /// <summary>Passed to <c>lsm local up</c>, so every node it starts inherits it (e.g. a crash plan).</summary>
    public IReadOnlyDictionary<string, string>? Environment { get; set; }
    /// <summary>More switches for <c>lsm local up</c> (e.g. <c>--hypervisor libvirt</c>, <c>--spm-hosts 2</c>, the partition tests' node addresses and namespaces); a restart of dead nodes gets them too.</summary>
    public IReadOnlyList<string> UpArguments { get; set; } = [];

    /// <summary>Starts the cluster, or (its nodes partly dead) the nodes that died; the API address may change.
    /// <c>up</c>'s own limit stays under the test's 90 s for a command, so a cluster that does not come up says what it
    /// waited for instead of being killed silently.</summary>
    /// <param name="storageRoot">False: as an operator types an up after a down, without repeating <c>--storage-root</c> (the cluster keeps it).</param>
    public async Task UpAsync(bool storageRoot = true)
    {
        Directory.CreateDirectory(Storage);
        var up = await CliProcess.RunWithEnvironmentAsync(null, Environment, null,
            ["local", "up", "--hosts", "2", "--data-dir", DataDirectory, "--api-port", "0", "--fast-timings", "--timeout", "75",
             .. storageRoot ? new[] { "--storage-root", Storage } : [], .. UpArguments]);
        Assert.True(up.ExitCode == 0, up + "\n" + LogTails());
        Api = (await LocalClusterState.ReadAsync(DataDirectory))!.ApiUrl;
    }

    public Task<CliResult> Lsm(params string[] arguments) => CliProcess.RunAsync(Api, arguments);

    /// <summary>An HTTP client for the API with the token <c>lsm local up</c> made (none when the cluster runs without one, as crash-plan clusters do).</summary>
    public HttpClient Http()
    {
        var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        var token = Path.Combine(DataDirectory, "api-token");
        if (File.Exists(token))
            http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", File.ReadAllText(token).Trim());
        return http;
    }

    /// <summary>Runs <c>lsm</c> and requires exit 0, showing the nodes' logs when it is not.</summary>
    public async Task<CliResult> Ok(params string[] arguments)
    {
        var result = await Lsm(arguments);
        Assert.True(result.ExitCode == 0, $"lsm {string.Join(' ', arguments)}\n{result}\n{LogTails()}");
        return result;
    }

    /// <summary>As <see cref="Ok"/> with <c>--json</c>, parsed.</summary>
    public async Task<JsonElement> Json(params string[] arguments) =>
        JsonDocument.Parse((await Ok([.. arguments, "--json"])).Stdout).RootElement;

    public string LogTails(int lines = 30) =>
        string.Join("\n", Directory.Exists(Path.Combine(DataDirectory, "logs"))
            ? Directory.EnumerateFiles(Path.Combine(DataDirectory, "logs")).Select(f =>
                $"--- {Path.GetFileName(f)} ---\n{string.Join('\n', File.ReadLines(f).TakeLast(lines))}")
            : []);

    public async ValueTask DisposeAsync()
    {
        if (!Directory.Exists(DataDirectory)) return;
        await LocalClusterLauncher.DownAsync(DataDirectory);
        Directory.Delete(DataDirectory, recursive: true);
    }
}

/// <summary>
/// The tests that start whole local clusters (and kill their nodes) run one class at a time: several clusters with QEMU
/// on two cores at once starve the failure detectors, and the split brain resolver then downs a healthy Coordinator.
/// </summary>
[CollectionDefinition(Name)]
public sealed class LocalClusters
{
    public const string Name = "local clusters";
}
