using System.Net;
using System.Text.Json;

namespace LiveMigration.Dashboard.Tests;

/// <summary>The Coordinator's server-sent events, read over HTTP from a real Coordinator process while a disk moves.</summary>
[Collection(DashboardCollection.Name)]
public sealed class EventStreamTests(DashboardCluster cluster)
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task One_migrations_stream_starts_with_its_state_and_ends_after_it_finished()
    {
        var (_, destination) = await cluster.SettledDiskAsync();
        var id = await cluster.StartMoveAsync(destination);
        using var limit = new CancellationTokenSource(Limit);

        using var response = await cluster.Http.GetAsync($"{cluster.Api}/api/migrations/{id}/events", HttpCompletionOption.ResponseHeadersRead, limit.Token);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        var reader = new EventStreamReader(await response.Content.ReadAsStreamAsync(limit.Token));
        var migrations = new List<JsonElement>();
        while (await reader.NextAsync(limit.Token) is { } e)
        {
            if (e.Comment is not null) continue;
            Assert.Equal("migration", e.Name);
            migrations.Add(JsonDocument.Parse(e.Data).RootElement.Clone());
        }

        // The server closed the stream: the last event is the finished migration, and every event is this one.
        Assert.NotEmpty(migrations);
        Assert.All(migrations, m => Assert.Equal(id, m.GetProperty("id").GetString()));
        Assert.All(migrations[..^1], m => Assert.False(m.GetProperty("finished").GetBoolean()));
        var last = migrations[^1];
        Assert.True(last.GetProperty("finished").GetBoolean());
        Assert.Equal("completed", last.GetProperty("status").GetString());
        // The same JSON as GET /api/migrations/{id}: disks with progress and step timings.
        var disk = Assert.Single(last.GetProperty("disks").EnumerateArray().ToList());
        Assert.Equal(cluster.Cluster.Image.ToString(), disk.GetProperty("image").GetString());
        Assert.Equal(destination, disk.GetProperty("destination").GetString());
        Assert.Contains(disk.GetProperty("timings").EnumerateArray(), t => t.GetProperty("step").GetString() == "Pivot");
        await cluster.SettledDiskAsync(expectedDomain: destination);

        // A finished migration's stream is its final state alone.
        using var again = await cluster.Http.GetAsync($"{cluster.Api}/api/migrations/{id}/events", HttpCompletionOption.ResponseHeadersRead, limit.Token);
        var replay = new EventStreamReader(await again.Content.ReadAsStreamAsync(limit.Token));
        var events = new List<ServerSentEvent>();
        while (await replay.NextAsync(limit.Token) is { } e)
            if (e.Comment is null) events.Add(e);
        var only = Assert.Single(events);
        Assert.Equal("completed", JsonDocument.Parse(only.Data).RootElement.GetProperty("status").GetString());
    }

    [Fact]
    public async Task All_migrations_stream_sends_each_change_until_finished_and_keep_alive_comments()
    {
        var (_, destination) = await cluster.SettledDiskAsync();
        using var limit = new CancellationTokenSource(Limit);
        using var response = await cluster.Http.GetAsync($"{cluster.Api}/api/migrations/events", HttpCompletionOption.ResponseHeadersRead, limit.Token);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        var reader = new EventStreamReader(await response.Content.ReadAsStreamAsync(limit.Token));
        Assert.Equal("connected", (await reader.NextAsync(limit.Token))?.Comment);

        var id = await cluster.StartMoveAsync(destination);
        var statuses = new List<string>();
        while (true)
        {
            var e = await reader.NextAsync(limit.Token) ?? throw new Xunit.Sdk.XunitException("the stream of all migrations ended; it must stay open");
            if (e.Comment is not null) continue;
            Assert.Equal("migration", e.Name);
            var m = JsonDocument.Parse(e.Data).RootElement;
            if (m.GetProperty("id").GetString() != id) continue;
            statuses.Add(m.GetProperty("status").GetString()!);
            if (m.GetProperty("finished").GetBoolean()) break;
        }
        Assert.True(statuses.Count >= 2, $"expected the running state before the finished one, got [{string.Join(", ", statuses)}]");
        Assert.Equal("completed", statuses[^1]);

        // Idle now: keep-alive comments come every second here (15 s by default).
        using var idle = CancellationTokenSource.CreateLinkedTokenSource(limit.Token);
        idle.CancelAfter(TimeSpan.FromSeconds(5));
        ServerSentEvent? next;
        do next = await reader.NextAsync(idle.Token);
        while (next is { Comment: null });
        Assert.Equal("keep-alive", next?.Comment);
        await cluster.SettledDiskAsync(expectedDomain: destination);
    }

    [Fact]
    public async Task Clients_that_go_away_are_unsubscribed_and_new_streams_still_get_changes()
    {
        var (_, destination) = await cluster.SettledDiskAsync();
        using var limit = new CancellationTokenSource(Limit);
        // Open and drop a few streams: each must leave nothing behind that breaks the next one.
        for (var i = 0; i < 5; i++)
        {
            using var dropped = await cluster.Http.GetAsync($"{cluster.Api}/api/migrations/events", HttpCompletionOption.ResponseHeadersRead, limit.Token);
            Assert.Equal("connected", (await new EventStreamReader(await dropped.Content.ReadAsStreamAsync(limit.Token)).NextAsync(limit.Token))?.Comment);
        }
        using var response = await cluster.Http.GetAsync($"{cluster.Api}/api/migrations/events", HttpCompletionOption.ResponseHeadersRead, limit.Token);
        var reader = new EventStreamReader(await response.Content.ReadAsStreamAsync(limit.Token));
        Assert.Equal("connected", (await reader.NextAsync(limit.Token))?.Comment);
        var id = await cluster.StartMoveAsync(destination);
        while (await reader.NextAsync(limit.Token) is { } e)
        {
            if (e.Comment is not null) continue;
            var m = JsonDocument.Parse(e.Data).RootElement;
            if (m.GetProperty("id").GetString() == id && m.GetProperty("finished").GetBoolean()) break;
        }
        await cluster.SettledDiskAsync(expectedDomain: destination);
    }

    [Fact]
    public async Task Unknown_migration_is_404_and_a_malformed_id_is_400()
    {
        using var unknown = await cluster.Http.GetAsync($"{cluster.Api}/api/migrations/{Guid.NewGuid()}/events");
        Assert.Equal(HttpStatusCode.NotFound, unknown.StatusCode);
        Assert.Equal("MIGRATION_NOT_FOUND", JsonDocument.Parse(await unknown.Content.ReadAsStringAsync()).RootElement.GetProperty("code").GetString());

        using var malformed = await cluster.Http.GetAsync($"{cluster.Api}/api/migrations/not-a-uuid/events");
        Assert.Equal(HttpStatusCode.BadRequest, malformed.StatusCode);
        Assert.Contains("UUID", JsonDocument.Parse(await malformed.Content.ReadAsStringAsync()).RootElement.GetProperty("message").GetString());
    }
}
