using System.Net.Http.Json;
using System.Text.Json;
using LiveMigration.Cli.Tests;

namespace LiveMigration.Dashboard.Tests;

[CollectionDefinition(Name)]
public sealed class DashboardCollection : ICollectionFixture<DashboardCluster>
{
    public const string Name = "dashboard cluster";
}

/// <summary>
/// One real cluster (the CLI tests' <see cref="ClusterFixture"/>: a Coordinator and host-1 as processes, a QEMU VM
/// with a 3-volume chain on domain-a) shared by the event-stream, watch and browser tests, which run one after
/// the other and each move the VM's disk to whichever domain it is not on. The Coordinator's keep-alive is
/// 1 s here so a test sees one without waiting the default 15 s.
/// </summary>
public sealed class DashboardCluster : IAsyncLifetime
{
    public const string KeepAliveVariable = "LSM_Coordinator__EventKeepAliveSeconds";

    public ClusterFixture Cluster { get; } = new();
    public HttpClient Http { get; } = new() { Timeout = TimeSpan.FromSeconds(30) };
    public string Api => Cluster.Api;

    public async Task InitializeAsync()
    {
        // The Coordinator process inherits it (LSM_ is its configuration's environment prefix).
        Environment.SetEnvironmentVariable(KeepAliveVariable, "1");
        await Cluster.InitializeAsync();
    }

    public async Task DisposeAsync()
    {
        Http.Dispose();
        await Cluster.DisposeAsync();
    }

    /// <summary>
    /// Waits until the disk is held by no migration and the inventory shows it on one domain; returns that domain
    /// and the other one (where the next move goes).
    /// </summary>
    public async Task<(string Current, string Other)> SettledDiskAsync(string? expectedDomain = null)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (true)
        {
            var inventory = await Http.GetFromJsonAsync<JsonElement>($"{Api}/api/inventory");
            var held = inventory.GetProperty("reservations").EnumerateArray().Any(r => r.GetProperty("image").GetString() == Cluster.Image.ToString());
            var drive = inventory.GetProperty("vms").EnumerateArray()
                .Select(v => v.GetProperty("vm"))
                .Where(v => v.GetProperty("id").GetString() == Cluster.Vm.ToString())
                .SelectMany(v => v.GetProperty("drives").EnumerateArray())
                .First(d => d.GetProperty("image").GetString() == Cluster.Image.ToString());
            var current = drive.GetProperty("chain").EnumerateArray().Last().GetProperty("domain").GetString()!;
            if (!held && (expectedDomain is null || current == expectedDomain))
            {
                var other = current == Cluster.A.Id.ToString() ? Cluster.B.Id.ToString() : Cluster.A.Id.ToString();
                return (current, other);
            }
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"disk {Cluster.Image} still held by a migration ({held}) or on {current} instead of {expectedDomain} after 30 s\n{Cluster.LogTails()}");
            await Task.Delay(200);
        }
    }

    public string DomainName(string id) => id == Cluster.A.Id.ToString() ? "domain-a" : "domain-b";

    /// <summary>Starts moving the VM's disk to <paramref name="destination"/>; returns the migration's id.</summary>
    public async Task<string> StartMoveAsync(string destination, long bandwidthBytesPerSecond = 0)
    {
        using var response = await Http.PostAsJsonAsync($"{Api}/api/migrations", new
        {
            vm = Cluster.Vm.ToString(),
            disks = new[] { new { image = Cluster.Image.ToString(), destination } },
            strategy = "pre-copy",
            bandwidthBytesPerSecond,
        });
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, $"POST /api/migrations: {(int)response.StatusCode} {body}");
        return JsonDocument.Parse(body).RootElement.GetProperty("id").GetString()!;
    }
}
