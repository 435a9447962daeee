using Akka.Actor;
using Akka.Hosting;
using LiveMigration.Shared.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace LiveMigration.Cluster.Specs.InProcess;

/// <summary>
/// Cluster nodes as real ActorSystems on loopback, each wired by <see cref="ClusterNodeHosting.WithClusterNode"/> as the
/// processes are; a node without seeds joins itself. Stopped in reverse order when disposed (a terminated one too).
/// </summary>
public sealed class LoopbackNodes : IAsyncDisposable
{
    private readonly List<IHost> _hosts = [];

    public async Task<ActorSystem> StartAsync(ClusterNodeSettings settings, Action<AkkaConfigurationBuilder>? more = null)
    {
        var host = new HostBuilder()
            .ConfigureServices(s => s.AddAkka(ClusterNodeSettings.SystemName, akka =>
            {
                akka.WithClusterNode(settings);
                if (settings.Seeds.Count == 0)
                    akka.AddStartup((system, _) => Akka.Cluster.Cluster.Get(system).Join(Akka.Cluster.Cluster.Get(system).SelfAddress));
                more?.Invoke(akka);
            }))
            .Build();
        _hosts.Add(host);
        await host.StartAsync();
        return host.Services.GetRequiredService<ActorSystem>();
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var host in Enumerable.Reverse(_hosts))
        {
            await host.StopAsync();
            host.Dispose();
        }
    }
}
