using LiveMigration.Coordinator.Api;
using LiveMigration.Coordinator.Audit;
using LiveMigration.Coordinator.Dashboard;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Coordinator.Persistence;
using LiveMigration.Shared.Serialization;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;

namespace LiveMigration.Coordinator.Hosting;

/// <summary>
/// The HTTP side of a Coordinator: the services its endpoints use, and every endpoint behind the API's security (tokens,
/// roles, audit). One place, so the Coordinator and the tests that check every endpoint's role serve the same set.
/// </summary>
public static class CoordinatorApiHosting
{
    /// <param name="journal">The Coordinator's journal: the migrations list keeps its read table beside it (null: in memory).</param>
    public static IServiceCollection AddCoordinatorApi(this IServiceCollection services, JournalOptions? journal = null)
    {
        // Bad JSON bodies throw, so the error handler answers them in the API's {code, message} shape.
        services.Configure<Microsoft.AspNetCore.Routing.RouteHandlerOptions>(o => o.ThrowOnBadRequest = true);
        services.AddSingleton<MigrationService>();
        services.AddSingleton(sp => new MigrationCatalog(sp.GetRequiredService<Akka.Actor.ActorSystem>(),
            journal is null ? null : MigrationViewOptions.For(journal)));
        services.AddSingleton<AuditRecorder>();
        services.AddSingleton<IApiAuditTrail>(sp => sp.GetRequiredService<AuditRecorder>());
        // The meter of the sagas, exported as Prometheus text at /metrics.
        services.AddOpenTelemetry()
            .ConfigureResource(resource => resource.AddService("lsm-coordinator"))
            .WithMetrics(metrics => metrics
                .AddMeter(MigrationMetrics.Meter.Name)
                .AddPrometheusExporter());
        // Ids as plain UUID strings and enums by name, as on the wire.
        services.ConfigureHttpJsonOptions(o =>
        {
            foreach (var converter in ProtocolJson.Options.Converters)
                o.SerializerOptions.Converters.Add(converter);
        });
        return services;
    }

    public static WebApplication UseCoordinatorApi(this WebApplication app, ApiTokens? tokens, JournalOptions journal)
    {
        app.UseApiSecurity(tokens);
        app.MapMigrationApi();
        app.MapClusterApi();
        app.MapMigrationEventStreams();
        app.MapDashboard();
        app.MapHealth(journal, tokens);
        app.MapAuditApi();
        // A scrape is a GET; the exporter alone would answer any method.
        app.MapPrometheusScrapingEndpoint("/metrics").WithMetadata(new Microsoft.AspNetCore.Routing.HttpMethodMetadata(["GET"]));
        app.MapHostApi();
        app.MapVmApi();
        // The list's projection reads what the journal holds since its read table's offset (all of it, the first time); done
        // at start, so the first operator's list does not wait for it.
        app.Lifetime.ApplicationStarted.Register(() => _ = CatchUpAsync(app));
        return app;
    }

    private static async Task CatchUpAsync(WebApplication app)
    {
        try
        {
            await app.Services.GetRequiredService<MigrationCatalog>().PageAsync(activeOnly: true, 0, 1, app.Lifetime.ApplicationStopping);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            app.Logger.LogWarning(e, "The migrations list could not read the journal at start; the first list reads it instead");
        }
    }
}
