using System.Text.Json;
using System.Threading.Channels;
using Akka.Actor;
using Akka.Cluster;
using Microsoft.AspNetCore.Http;
using AkkaCluster = Akka.Cluster.Cluster;

namespace LiveMigration.Coordinator.Api;

/// <summary>One membership event of GET /api/cluster/events (the <c>data</c> of an <c>event: member</c>).</summary>
public sealed record ClusterEventResponse(string Type, string Address, string Status, IReadOnlyList<string> Roles, DateTimeOffset At);

/// <summary>
/// Subscribes to the cluster's membership and reachability events for one SSE client and hands them over through a
/// channel; it starts with the current members as events (Akka's InitialStateAsEvents), so a client sees who is there.
/// </summary>
public sealed class ClusterEventListener : ReceiveActor
{
    private readonly ChannelWriter<ClusterEventResponse> _events;

    public ClusterEventListener(ChannelWriter<ClusterEventResponse> events)
    {
        _events = events;
        Receive<ClusterEvent.IMemberEvent>(e => Write(e.GetType().Name, e.Member));
        Receive<ClusterEvent.UnreachableMember>(e => Write(nameof(ClusterEvent.UnreachableMember), e.Member));
        Receive<ClusterEvent.ReachableMember>(e => Write(nameof(ClusterEvent.ReachableMember), e.Member));
    }

    public static Props Props(ChannelWriter<ClusterEventResponse> events) => Akka.Actor.Props.Create(() => new ClusterEventListener(events));

    protected override void PreStart() =>
        AkkaCluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents,
            typeof(ClusterEvent.IMemberEvent), typeof(ClusterEvent.IReachabilityEvent));

    protected override void PostStop()
    {
        AkkaCluster.Get(Context.System).Unsubscribe(Self);
        _events.TryComplete();
    }

    private void Write(string type, Member member) =>
        _events.TryWrite(new ClusterEventResponse(type, member.Address.ToString(), ClusterEndpoints.StatusName(member.Status),
            member.Roles.OrderBy(r => r, StringComparer.Ordinal).ToList(), DateTimeOffset.UtcNow));
}

public static class ClusterEventStream
{
    private static readonly TimeSpan KeepAlive = TimeSpan.FromSeconds(15);

    /// <summary>Writes <c>event: member</c> frames until the client goes away; a comment every 15 s keeps proxies from closing it.</summary>
    public static async Task StreamAsync(HttpContext http, ActorSystem system, JsonSerializerOptions json, CancellationToken ct)
    {
        // A slow client loses the oldest events rather than growing the Coordinator's memory.
        var channel = Channel.CreateBounded<ClusterEventResponse>(new BoundedChannelOptions(1024) { FullMode = BoundedChannelFullMode.DropOldest });
        var listener = system.ActorOf(ClusterEventListener.Props(channel.Writer));
        try
        {
            http.Response.ContentType = "text/event-stream";
            http.Response.Headers.CacheControl = "no-cache";
            await http.Response.WriteAsync(": membership events of this cluster\n\n", ct);
            await http.Response.Body.FlushAsync(ct);
            while (!ct.IsCancellationRequested)
            {
                using var wait = CancellationTokenSource.CreateLinkedTokenSource(ct);
                wait.CancelAfter(KeepAlive);
                bool more;
                try
                {
                    more = await channel.Reader.WaitToReadAsync(wait.Token);
                }
                catch (OperationCanceledException) when (!ct.IsCancellationRequested)
                {
                    await http.Response.WriteAsync(": keep-alive\n\n", ct);
                    await http.Response.Body.FlushAsync(ct);
                    continue;
                }
                if (!more) break;
                while (channel.Reader.TryRead(out var e))
                    await http.Response.WriteAsync($"event: member\ndata: {JsonSerializer.Serialize(e, json)}\n\n", ct);
                await http.Response.Body.FlushAsync(ct);
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            // the client went away: the normal end of a stream
        }
        finally
        {
            system.Stop(listener);
        }
    }
}
